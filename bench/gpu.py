"""GPU machine benchmark: needs only torch, torchvision, numpy, onnx and onnxruntime (what the lent
GPU machines have), and fits in a few minutes on one H100/H200.

(a) Teacher training throughput (images/s): Distillery's loop (`distillery.training.fit`: bf16
    autocast, channels-last, uint8 data held in GPU memory) against a plain PyTorch loop
    (DataLoader of float tensors, fp32, contiguous) on the same model, data, batch size and optimizer.
(b) int8 vs fp32 onnxruntime latency of the same pruned student on this machine's CPU.

    python -m bench.gpu --run bench/work/seed-0 --out $OUT/gpu.json
"""

import argparse
import json
import time
from functools import partial
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distillery import models, onnx_export
from distillery.augment import Recipe
from distillery.data import Split, load_dataset
from distillery.machine import cpu_flags
from distillery.training import TrainSettings, fit, pick_device, seeded
from project.layout import DEPLOYABLE, Layout


def replicated(split: Split, times: int) -> Split:
    """Longer epochs from the same images, so the timing is not dominated by start-up."""
    return Split(split.images, split.rows.repeat(times), split.y.repeat(times))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop_images_per_s(model: nn.Module, train: Split, settings: TrainSettings, device: torch.device) -> float:
    """The loop most tutorials write: a DataLoader, fp32, per-batch host-to-device copies."""
    model.to(device).train()
    loader = DataLoader(TensorDataset(*train[:]), batch_size=settings.batch_size, shuffle=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(settings.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    synchronize(device)
    return settings.epochs * len(train.y) / (time.perf_counter() - started)


def distillery_images_per_s(
    model: nn.Module, train: Split, val: Split, settings: TrainSettings, device: torch.device
) -> float:
    """`fit` as the teachers stage runs it (its per-epoch validation pass included)."""
    synchronize(device)
    started = time.perf_counter()
    fit(model, train, val, settings, device, name="bench")
    synchronize(device)
    return settings.epochs * len(train.y) / (time.perf_counter() - started)


def training_throughput(
    dataset: Path, archs: list[str], epochs: int, batch_size: int, replicate: int, device: torch.device
) -> dict:
    data = load_dataset(dataset)
    train = replicated(data.train, replicate)
    settings = TrainSettings(epochs, batch_size, 1e-3, 1e-4, augment=False, seed=0, recipe=Recipe())
    results = {}
    for arch in archs:
        spec = {"arch": arch, "in_channels": data.in_channels, "num_classes": data.num_classes}
        warm = TrainSettings(
            1, batch_size, 1e-3, 1e-4, augment=False, seed=0, recipe=Recipe()
        )  # cuDNN autotune, allocator
        build = partial(models.build, spec)  # the same initial weights for each loop
        fit(seeded(0, build), replicated(data.train, 1), data.val, warm, device)
        plain = plain_loop_images_per_s(seeded(0, build), train, settings, device)
        ours = distillery_images_per_s(seeded(0, build), train, data.val, settings, device)
        results[arch] = {"plain_images_per_s": plain, "distillery_images_per_s": ours, "ratio": ours / plain}
        print(f"{arch}: plain {plain:,.0f} img/s, distillery {ours:,.0f} img/s ({ours / plain:.2f}x)", flush=True)
    return results


def cpu_latency(layout: Layout, threads: int) -> dict:
    x = load_dataset(layout.raw).test.head(256).numpy()
    results = {}
    for name in DEPLOYABLE:
        sess = onnx_export.session(layout.onnx(name), threads)
        results[name] = {f"b{b}": onnx_export.latency_ms(sess, x, batch=b, budget_s=2.0) for b in (1, 256)}
    results["int8_speedup"] = {b: results["pruned"][b] / results["int8"][b] for b in ("b1", "b256")}
    print(f"onnxruntime CPU ({threads} threads): {results}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="the root of a finished run (its data/ and export)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--archs", nargs="+", default=["resnet18", "wide_cnn", "small_resnet"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--replicate", type=int, default=8, help="repeat the training images this many times")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="onnxruntime CPU threads (1: the report's default, measure.latency_threads)",
    )
    args = parser.parse_args()
    layout = Layout(args.run)
    device = pick_device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "cpu": cpu_flags(),
        "training": training_throughput(layout.raw, args.archs, args.epochs, args.batch_size, args.replicate, device),
        "cpu_latency_ms": cpu_latency(layout, args.threads),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Prune: gradual structured channel pruning of the distilled student, fine-tuned with KD. Then the
baseline for what distillation gave at this size: the pruned architecture trained from scratch on labels
alone (pruned_alone), with the student's recipe, for as many epochs as the pruned student trained in all."""

import copy
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from distillery import checkpoint, models, onnx_export
from distillery.data import Dataset, load_dataset
from distillery.files import atomic_dir, write_json
from distillery.models import conv_layers, widths
from distillery.pruning import (
    kept_channels,
    make_pruner,
    prune_gradually,
    pruned_spec,
    ratios_from_scan,
    sensitivity_scan,
)
from distillery.training import Objective, accuracy
from project.config import AugmentConfig, DistillConfig, KDConfig, MeasureConfig, PruneConfig, ShipConfig
from project.layout import Layout
from project.settings import device, kd_settings, train_settings
from project.stage import Stage
from project.students import load_teaching, train_student, trained_on, training_images

log = logging.getLogger("distillery")
SENSITIVITY_GRID = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def onnx_latency_ms(model: nn.Module, data: Dataset, *, batch: int, threads: int) -> float:
    """The model's onnxruntime latency on this machine, as the report measures it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "candidate.onnx"
        onnx_export.export(copy.deepcopy(model).cpu().eval(), data.val.head(2), path)
        return onnx_export.latency_ms(
            onnx_export.session(path, threads), data.val.head(batch).numpy(), batch=batch, budget_s=0.5
        )


def latency_check(target_ms: float, data: Dataset, *, batch: int, threads: int) -> Callable[[nn.Module], bool]:
    def fast_enough(model: nn.Module) -> bool:
        ms = onnx_latency_ms(model, data, batch=batch, threads=threads)
        log.info("widths %s: %.4f ms at batch %d (target %.4f)", widths(model), ms, batch, target_ms)
        return ms <= target_ms

    return fast_enough


def plot_sensitivity(sensitivity: dict, path: Path) -> None:
    """Each layer's scan: validation accuracy against the share of its channels that pruning removes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, accs in sensitivity["val_accuracy"].items():
        channels = sensitivity["channels"][name]
        removed = [1 - kept / channels for kept in sensitivity["kept_channels"][name]]
        percent = [a * 100 if a is not None else float("nan") for a in accs]  # gaps where nothing is removed
        ax.plot(removed, percent, marker=".", label=f"{name} (chosen {sensitivity['layer_ratios'][name]:.1f})")
    ax.axhline(sensitivity["baseline"] * 100, color="gray", linestyle="--", linewidth=1, label="unpruned")
    ax.set(
        xlabel="share of the layer's channels removed (that layer alone, rounded as applied, no fine-tuning)",
        ylabel="validation accuracy (%)",
        title="Pruning sensitivity per layer",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    config: PruneConfig,
    distill: DistillConfig,
    kd: KDConfig,
    ship: ShipConfig,
    measure: MeasureConfig,
    augment: AugmentConfig,
    layout: Layout,
) -> dict:
    """Write data/models/pruned/: a physically smaller student (new widths in its spec), and its
    architecture trained alone."""
    data = load_dataset(layout.raw)
    model, spec = checkpoint.load(layout.checkpoint("student_kd"))
    model.to(device()).eval()
    before = models.count_params(model)
    result: dict = {"params_before": before, "schedule": config.schedule}
    channels = {name: layer.out_channels for name, layer in conv_layers(model).items()}
    layer_ratios = None
    if config.per_layer == "sensitivity":
        baseline = accuracy(model, data.val, device())
        scan = sensitivity_scan(model, data.val, SENSITIVITY_GRID, device(), round_to=config.round_to)
        layer_ratios = ratios_from_scan(
            scan, SENSITIVITY_GRID, baseline=baseline, max_drop_pp=config.sensitivity_max_drop_pp, cap=config.ratio
        )
        result["sensitivity"] = {
            "grid": SENSITIVITY_GRID,
            "channels": channels,
            "kept_channels": {
                name: [kept_channels(c, r, config.round_to) for r in SENSITIVITY_GRID] for name, c in channels.items()
            },
            "val_accuracy": scan,
            "baseline": baseline,
            "layer_ratios": layer_ratios,
        }
        log.info("per-layer prune ratios from the sensitivity scan: %s", layer_ratios)
    target = config.target_latency_ms
    threads = onnx_export.cpu_threads(measure.latency_threads)
    fast_enough = latency_check(target, data, batch=ship.latency_batch, threads=threads) if target else None
    teaching = load_teaching(layout, data.transfer)
    objective = Objective(teaching, kd_settings(kd))
    pruner = make_pruner(
        model,
        data.train.head(2).to(device()),
        ratio=config.ratio,
        steps=config.steps,
        round_to=config.round_to,
        schedule=config.schedule,
        layer_ratios=layer_ratios,
    )
    images = training_images(data, objective)
    history = prune_gradually(
        model,
        images,
        data.val,
        pruner,
        steps=config.steps,
        settings=train_settings(config, augment),
        objective=objective,
        device=device(),
        fast_enough=fast_enough,
    )
    spec = pruned_spec(spec, model)
    result |= {
        "params": models.count_params(model),
        "widths": widths(model),
        "removed_share": {name: 1 - layer.out_channels / channels[name] for name, layer in conv_layers(model).items()},
        "val_accuracy": accuracy(model.eval(), data.val, device()),
        "trained_on": trained_on(data, images),
        "history": history,
    }
    if target:
        result["latency_ms"] = onnx_latency_ms(model, data, batch=ship.latency_batch, threads=threads)
        result["onnxruntime_threads"] = threads
        result["target_latency_met"] = result["latency_ms"] <= target
        if not result["target_latency_met"]:
            log.warning(
                "prune.target_latency_ms %.4f not reached at ratio %.2f: %.4f ms",
                target,
                config.ratio,
                result["latency_ms"],
            )
    same_epochs = distill.model_copy(update={"epochs": distill.epochs + config.epochs})
    alone_model, alone_result = train_student(
        spec, data, same_epochs, augment=augment, kd=None, teaching=teaching, name="pruned_alone"
    )
    with atomic_dir(layout.pruned) as out:
        for name, trained, record in (("pruned", model, result), ("pruned_alone", alone_model, alone_result)):
            checkpoint.save(trained, spec, out / layout.checkpoint(name).name)
            write_json(out / layout.record(name).name, record)
        if layer_ratios is not None:
            plot_sensitivity(result["sensitivity"], out / layout.sensitivity_plot.name)
    return {k: result[k] for k in ("params_before", "params", "widths", "val_accuracy")} | {
        "pruned_alone_val_accuracy": alone_result["val_accuracy"]
    }


STAGE = Stage(
    run,
    reads=(Layout.raw, Layout.teachers, Layout.student),
    writes=(Layout.pruned,),
    uses={"ship": ("latency_batch",), "measure": ("latency_threads",)},
)

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

"""The alternatives a user would reach for, built from the same run's models: masked (unstructured)
pruning and onnxruntime's post-training int8 quantization (KD from the best single teacher is the
students' own `train_student` with one teacher)."""

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from distillery.data import Dataset
from distillery.training import Objective, TrainSettings, optimizer_for, set_cosine_lr, train_epoch
from project.students import training_images


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def masked_prune(
    model: nn.Module,
    data: Dataset,
    *,
    remove: int,
    steps: int,
    settings: TrainSettings,
    objective: Objective,
    device: torch.device,
) -> nn.Module:
    """Zero the `remove` smallest-magnitude conv/linear weights (global L1) in `steps` steps, one per
    epoch, with the prune stage's fine-tuning schedule. The model keeps its dense shape."""
    model.to(device)
    total = sum(m.weight.numel() for m, _ in prunable(model))
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = optimizer_for(model, settings)  # pruning re-registers `weight` as `weight_orig`, same tensor
    removed, images = 0, training_images(data, objective)  # the transfer set too, as the prune stage distils
    for epoch in range(1, settings.epochs + 1):
        if epoch <= steps:
            target = round(min(remove, total - 1) * epoch / steps)
            prune.global_unstructured(prunable(model), prune.L1Unstructured, amount=target - removed)
            removed = target
        set_cosine_lr(optimizer, settings, epoch)
        model.train()
        train_epoch(model, optimizer, images, settings, objective, generator, device, epoch=epoch)
    for module, name in prunable(model):
        prune.remove(module, name)
    return model.eval()


def nonzero_params(model: nn.Module) -> int:
    return int(sum((p != 0).sum() for p in model.parameters()))


def ort_static_int8(fp32_onnx: Path, calibration: np.ndarray, out: Path) -> Path:
    """onnxruntime post-training static quantization (QDQ, per-channel, reduce_range as our QAT)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"images": calibration[i : i + 64]} for i in range(0, len(calibration), 64)])

        def get_next(self):
            return next(self.items, None)

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_onnx), str(prepared))
    quantize_static(
        str(prepared),
        str(out),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
    return out

"""Gradual structured channel pruning that slices channels out (torch-pruning), with KD fine-tuning.

Controls: the schedule of the pruning steps (linear, or AGP's cubic one), per-layer ratios from a
sensitivity scan, and a stop once the model is fast enough.
"""

import copy
import logging
import math
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from distillery.data import Split
from distillery.models import conv_layers, layer_sizes, widths
from distillery.names import STUDENT_CNN
from distillery.training import Objective, TrainSettings, accuracy, optimizer_for, set_cosine_lr, train_epoch

log = logging.getLogger("distillery")


def agp_schedule(ratio: float, steps: int) -> list[float]:
    """Zhu & Gupta's automated gradual pruning: cubic, most channels go early while the model is
    still redundant, few at the end. Entry i is the ratio reached after step i."""
    return [ratio * (1 - (1 - i / steps) ** 3) for i in range(steps + 1)]


SCHEDULES: dict[str, Callable[[float, int], list[float]]] = {
    "linear": tp.pruner.algorithms.scheduler.linear_scheduler,
    "agp": agp_schedule,
}


def output_layer(model: nn.Module) -> nn.Linear:
    """The layer that gives the class scores (the last linear one): pruning leaves its outputs alone."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def pruned_spec(spec: dict, model: nn.Module) -> dict:
    """The spec of `model`, pruned from the one `spec` builds: a student_cnn's new widths; for a torchvision model,
    the channel counts of its layers."""
    if spec["arch"] == STUDENT_CNN:
        return {**spec, "widths": widths(model)}
    return {**spec, "layers": layer_sizes(model)}


def kept_channels(channels: int, ratio: float, round_to: int) -> int:
    """How many of a layer's channels stay when at most `ratio` of them go: at least channels x (1 - ratio),
    rounded up to a multiple of `round_to` (0: no rounding), and never more than the layer has."""
    kept = math.ceil(channels * (1 - ratio) - 1e-9)  # the tolerance keeps 64 x 0.5 at 32, not 33
    if round_to:
        kept = math.ceil(kept / round_to) * round_to
    return max(1, min(channels, kept))


def exact_ratio(channels: int, kept: int) -> float:
    """The ratio torch-pruning turns into exactly `kept` channels (it keeps int(channels x (1 - ratio)))."""
    return max(0.0, 1 - (kept + 0.5) / channels)


class StepPruner:
    """Slices each conv layer down to `widths[i]` at step i (torch-pruning: dependency-aware, channels ranked
    anew by group magnitude at each step). The widths are chosen here, not by torch-pruning's own rounding."""

    def __init__(self, model: nn.Module, example: torch.Tensor, widths: list[dict[str, int]]):
        self.model, self.example, self.widths, self.done = model, example, widths, 0

    def step(self) -> None:
        if self.done == len(self.widths):
            return
        layers = conv_layers(self.model)
        targets = {
            layers[name]: exact_ratio(layers[name].out_channels, kept) for name, kept in self.widths[self.done].items()
        }
        tp.pruner.MetaPruner(
            self.model,
            self.example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.0,
            pruning_ratio_dict=targets,
            iterative_steps=1,
            ignored_layers=[output_layer(self.model)],
        ).step()
        self.done += 1


def make_pruner(
    model: nn.Module,
    example: torch.Tensor,
    *,
    ratio: float,
    steps: int,
    round_to: int,
    schedule: str = "agp",
    layer_ratios: dict[str, float] | None = None,
) -> StepPruner:
    """A pruner that takes each conv layer to `kept_channels` of its ratio (`layer_ratios`, else `ratio`) in
    `steps` steps on `schedule`. Every step's width is `kept_channels` of that step's ratio, rounded up to
    `round_to` too, so that a model whose pruning stops early (prune.target_latency_ms) keeps such widths."""
    channels = {name: layer.out_channels for name, layer in conv_layers(model).items()}
    ratios = {name: (layer_ratios or {}).get(name, ratio) for name in channels}
    plans = {name: SCHEDULES[schedule](ratios[name], steps) for name in channels}
    widths = [
        {name: kept_channels(channels[name], plans[name][i], round_to) for name in channels}
        for i in range(1, steps + 1)
    ]
    return StepPruner(model, example, widths)


def sensitivity_scan(
    model: nn.Module, val: Split, grid: list[float], device: torch.device, round_to: int
) -> dict[str, list[float | None]]:
    """Validation accuracy with one conv layer at a time pruned by each ratio in `grid`, no fine-tuning,
    to the channel count pruning would apply (`kept_channels`: rounded up to `round_to`). None where
    that count is the layer's own (the ratio removes nothing)."""
    example = val.head(2).to(device)
    scan = {}
    for name, layer in conv_layers(model).items():
        scan[name] = []
        for ratio in grid:
            if kept_channels(layer.out_channels, ratio, round_to) == layer.out_channels:
                scan[name].append(None)
                continue
            trial = copy.deepcopy(model).to(device).eval()
            pruner = make_pruner(
                trial, example, ratio=0.0, steps=1, round_to=round_to, schedule="linear", layer_ratios={name: ratio}
            )
            pruner.step()
            scan[name].append(accuracy(trial, val, device))
    return scan


def ratios_from_scan(
    scan: dict[str, list[float | None]], grid: list[float], *, baseline: float, max_drop_pp: float, cap: float
) -> dict[str, float]:
    """Per layer, the largest ratio (up to `cap`) whose accuracy drop stays within `max_drop_pp`."""
    return {
        name: max(
            [0.0]
            + [
                r
                for r, acc in zip(grid, accs, strict=True)
                if acc is not None and r <= cap and (baseline - acc) * 100 <= max_drop_pp
            ]
        )
        for name, accs in scan.items()
    }


def prune_gradually(
    model: nn.Module,
    train: Split,
    val: Split,
    pruner: StepPruner,
    *,
    steps: int,
    settings: TrainSettings,
    objective: Objective,
    device,
    fast_enough: Callable[[nn.Module], bool] | None = None,
) -> list[dict]:
    """Take `steps` pruning steps, one per epoch, fine-tuning after each; the remaining epochs only
    fine-tune. Steps stop early once `fast_enough(model)` holds. The model shrinks in place."""
    model.to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    history, pruning = [], not (fast_enough and fast_enough(model))
    optimizer = optimizer_for(model, settings)
    for epoch in range(1, settings.epochs + 1):
        if pruning and epoch <= steps:
            model.eval()
            pruner.step()
            optimizer = optimizer_for(model, settings)  # parameter shapes changed
            pruning = not (fast_enough and fast_enough(model))
        set_cosine_lr(optimizer, settings, epoch)
        model.train()
        loss = train_epoch(model, optimizer, train, settings, objective, generator, device, epoch=epoch)
        model.eval()
        val_acc = accuracy(model, val, device)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": val_acc, "widths": widths(model)})
        log.info(
            "prune epoch %d/%d widths %s loss %.4f val_acc %.4f", epoch, settings.epochs, widths(model), loss, val_acc
        )
    return history

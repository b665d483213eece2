"""Gradual structured channel pruning that slices channels out (torch-pruning), with KD fine-tuning."""

import logging
import math

import torch
import torch_pruning as tp

from distillery.data import Split
from distillery.models import StudentCNN
from distillery.training import TrainSettings, accuracy, optimizer_for, train_epoch

log = logging.getLogger("distillery")


def prune_gradually(model: StudentCNN, train: Split, val: Split, ratio: float, steps: int,
                    round_to: int, settings: TrainSettings, loss_fn, device) -> list[dict]:
    """Remove `ratio` of each conv layer's channels in `steps` equal steps, one per epoch,
    fine-tuning after each; the remaining epochs only fine-tune. The model shrinks in place."""
    model.to(device)
    example = train.x[:2].to(device)
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=ratio, iterative_steps=steps, ignored_layers=[model.classifier],
        round_to=round_to or None,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    history = []
    for epoch in range(1, settings.epochs + 1):
        if epoch <= steps:
            model.eval()
            pruner.step()
            optimizer = optimizer_for(model, settings)  # parameter shapes changed
        for group in optimizer.param_groups:  # cosine decay over all epochs
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / settings.epochs))
        model.train()
        loss = train_epoch(model, optimizer, train, settings, loss_fn, generator, device)
        model.eval()
        val_acc = accuracy(model, val, device)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": val_acc, "widths": model.widths()})
        log.info("prune epoch %d/%d widths %s loss %.4f val_acc %.4f",
                 epoch, settings.epochs, model.widths(), loss, val_acc)
    return history

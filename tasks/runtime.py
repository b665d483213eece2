"""What the training stages share: the device, training settings, checkpoint and history files."""

import json
import os
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from distillery.files import exclusive_lock
from distillery.training import KDSettings, TrainSettings, pick_device
from tasks.config import KDConfig, TrainConfig
from tasks.layout import Layout


def device() -> torch.device:
    """CUDA when present, else CPU; DISTILLERY_DEVICE=cpu|cuda|auto overrides."""
    return pick_device(os.environ.get("DISTILLERY_DEVICE", "auto"))


def train_settings(config: TrainConfig) -> TrainSettings:
    return TrainSettings(config.epochs, config.batch_size, config.lr, config.weight_decay, config.augment, config.seed)


def kd_settings(config: KDConfig) -> KDSettings:
    return KDSettings(config.temperature, config.alpha)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def workspace_lock(layout: Layout) -> AbstractContextManager[None]:
    """One run at a time in a workspace: the flow and every stage command hold this."""
    return exclusive_lock(layout.lock, f"The workspace {layout.root}")

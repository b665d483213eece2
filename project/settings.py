"""The library's settings from params: the device, the training recipe and the distillation loss."""

import os

import torch

from distillery.augment import Recipe
from distillery.training import KDSettings, TrainSettings, pick_device
from project.config import AugmentConfig, KDConfig, TrainConfig


def device() -> torch.device:
    """CUDA when present, else CPU; DISTILLERY_DEVICE=cpu|cuda|auto overrides."""
    return pick_device(os.environ.get("DISTILLERY_DEVICE", "auto"))


def recipe(config: AugmentConfig) -> Recipe:
    return Recipe(**config.model_dump())


def train_settings(config: TrainConfig, augment: AugmentConfig) -> TrainSettings:
    return TrainSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        augment=config.augment,
        seed=config.seed,
        recipe=recipe(augment),
    )


def kd_settings(config: KDConfig) -> KDSettings:
    return KDSettings(temperature=config.temperature, alpha=config.alpha)

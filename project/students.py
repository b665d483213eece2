"""Training a student from its spec: the recipe the distill stage, the prune stage's baseline and the
benchmark share."""

from torch import nn

from distillery import models
from distillery.data import Dataset
from distillery.training import accuracy, fit, make_loss, seeded
from project.config import DistillConfig, KDConfig
from project.settings import device, kd_settings, train_settings


def train_student(
    spec: dict, data: Dataset, config: DistillConfig, kd: KDConfig, *, teacher: nn.Module | None, name: str
) -> tuple[nn.Module, dict]:
    """The student of `spec` trained on `data`, from `teacher`'s soft targets (None: on labels alone)."""
    model = seeded(config.seed, lambda: models.build(spec))
    loss = make_loss(teacher, kd_settings(kd))
    history = fit(model, data.train, data.val, train_settings(config), device(), loss, name=name)
    return model, {
        "params": models.count_params(model),
        "widths": spec["widths"],
        "val_accuracy": accuracy(model.eval(), data.val, device()),
        "history": history,
    }

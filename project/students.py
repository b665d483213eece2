"""Training a student from its spec (the recipe the distill stage, the prune stage's baseline and the
benchmark share) and what students distil from."""

import logging

import torch
import torch.nn.functional as F
from torch import nn

from distillery import combine, models, teacher_outputs
from distillery.combine import Combination
from distillery.data import Dataset, Split
from distillery.models import Ensemble, widths
from distillery.teacher_outputs import TeacherOutputs
from distillery.training import Objective, accuracy, fit, logits, seeded
from project.artifacts import load_ensemble, load_model, read_combination
from project.config import AugmentConfig, DistillConfig, KDConfig
from project.layout import Layout
from project.settings import device, kd_settings, train_settings

log = logging.getLogger("distillery")


def load_teaching(layout: Layout, transfer: Split, combination: Combination | None = None) -> Ensemble | TeacherOutputs:
    """What students learn from: the ensemble's outputs on the `transfer` images (`Dataset.transfer`) where the
    teachers stage cached them (their views are then the images of every student, distilled or trained alone),
    else the ensemble itself, run on every batch; its teachers joined by `combination`, or by the one the distill
    stage chose."""
    combination = combination or read_combination(layout)
    if layout.teacher_outputs.exists():
        cached = teacher_outputs.load(layout.teacher_outputs, transfer)
        log.info(
            "students train on the stored images and %d random views, cached with the teachers' outputs",
            cached.views - 1,
        )
        return cached.combined(combination)
    log.info("no cached teacher outputs: students distil from the ensemble run on every batch")
    return load_ensemble(layout, combination).to(device())


def fit_ensemble(layout: Layout, rule: str, val: Split) -> tuple[Ensemble, dict]:
    """The teachers joined by the combination `rule` (kd.combine) names, fitted on their outputs for `val` where
    it is fitted; and for the record, its weights and every rule's validation NLL and accuracy."""
    teachers = [load_model(layout, t).to(device()) for t in layout.teacher_models()]
    members = torch.stack([logits(t, val, device()) for t in teachers], dim=1)
    candidates = {r: combine.choose(r, members, val.y) for r in combine.RULES}
    measured = {}
    for name, candidate in candidates.items():
        probabilities = candidate.probabilities(members)
        measured[name] = {
            "val_nll": F.nll_loss(probabilities.clamp_min(1e-12).log(), val.y).item(),
            "val_accuracy": (probabilities.argmax(dim=1) == val.y).float().mean().item(),
        }
    record = candidates[rule].to_json() | {"members": layout.teacher_models(), "validation": measured}
    return Ensemble(teachers, candidates[rule]).eval(), record


def training_images(data: Dataset, objective: Objective) -> Split:
    """What a model trains on: with a teacher, the training images and the transfer set; on labels alone, the
    training images."""
    return data.transfer if objective.teacher is not None else data.train


def trained_on(data: Dataset, images: Split) -> dict[str, int]:
    """For a model's record: how many labelled and unlabeled images it trained on (`images`)."""
    return {"labelled": len(data.train), "unlabeled": len(images) - len(data.train)}


def train_student(
    spec: dict,
    data: Dataset,
    config: DistillConfig,
    *,
    augment: AugmentConfig,
    kd: KDConfig | None,
    teaching: nn.Module | TeacherOutputs | None,
    name: str,
) -> tuple[nn.Module, dict]:
    """The student of `spec` trained on `data`: distilled from `teaching` (a model or its cached outputs) on the
    training images and the transfer set, or without `kd` on the labelled images alone; augmented as `augment` says.
    From a cache it trains on the cache's views either way."""
    model = seeded(config.seed, lambda: models.build(spec))
    objective = Objective(teaching, kd_settings(kd) if kd else None)
    images = training_images(data, objective)
    history = fit(model, images, data.val, train_settings(config, augment), device(), objective, name=name)
    return model, {
        "arch": spec["arch"],
        "params": models.count_params(model),
        "widths": widths(model),
        "distilled": objective.teacher is not None,
        "trained_on": trained_on(data, images),
        "val_accuracy": accuracy(model.eval(), data.val, device()),
        "history": history,
    }

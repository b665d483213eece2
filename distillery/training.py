"""Training loops: supervised and distilled, on CPU or CUDA (there: bf16 autocast, channels-last,
data in GPU memory or streamed through DataLoader workers into pinned memory)."""

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distillery import augment
from distillery.augment import Recipe
from distillery.data import Split, batches, to_device
from distillery.raw_format import UNLABELED
from distillery.teacher_outputs import TeacherOutputs

log = logging.getLogger("distillery")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: bool
    seed: int
    recipe: Recipe  # how augment draws its views


@dataclass(frozen=True)
class KDSettings:
    temperature: float
    alpha: float  # weight of the soft-target loss; 1 - alpha goes to hard labels


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


_GLOBAL_RNG = threading.Lock()


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model with a fixed seed; safe while other threads build theirs (teachers in parallel)."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def kd_loss(student_logits, soft_targets, labels, kd: KDSettings) -> torch.Tensor:
    """Hinton et al.: KL to the teachers' softened probabilities (scaled by T²) plus hard-label CE. The KL term is
    averaged over the batch, the CE term over its labelled images (an image of the transfer set, label UNLABELED,
    has none), so that `alpha` weighs the two as it does without a transfer set."""
    log_p = F.log_softmax(student_logits.float() / kd.temperature, dim=1)
    soft = F.kl_div(log_p, soft_targets, reduction="batchmean") * kd.temperature**2
    ce = F.cross_entropy(student_logits.float(), labels, ignore_index=UNLABELED, reduction="sum")
    hard = ce / (labels != UNLABELED).sum().clamp_min(1)
    return kd.alpha * soft + (1 - kd.alpha) * hard


@dataclass(frozen=True)
class Batch:
    """A training batch as the model sees it, and where its images came from."""

    x: torch.Tensor  # the images the model sees: augmented, or one cached view
    y: torch.Tensor
    index: torch.Tensor  # where the images are in the split trained on
    view: int | None  # the cached view `x` is; None when not from a cache


class Objective:
    """What a model learns from: the labels alone, or distillation from a teacher (an ensemble run on each
    batch, or its outputs cached once). With a cache, each epoch's images are one of its views, whether the
    model distils or learns the labels alone (without `kd`): the two then see the very same images."""

    def __init__(self, teacher: nn.Module | TeacherOutputs | None = None, kd: KDSettings | None = None):
        self.cache = teacher if isinstance(teacher, TeacherOutputs) else None
        distilled = teacher is not None and kd is not None and kd.alpha > 0
        self.teacher, self.kd = (teacher, kd) if distilled else (None, None)

    def batch(self, x, y, index, *, epoch: int, recipe: Recipe | None, generator: torch.Generator) -> Batch:
        """The batch the model trains on, from the stored images `x` at positions `index` of the split: augmented
        as `recipe` says (None: as stored), by the cache's views where there is a cache."""
        if self.cache is not None:
            view = self.cache.view(epoch, recipe is not None)
            return Batch(self.cache.images(x, view, index), y, index, view)
        return Batch(augment.augmented(x, recipe, generator) if recipe is not None else x, y, index, None)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy with the labels, or the distillation loss with the teacher's soft targets."""
        if self.teacher is None:
            return F.cross_entropy(logits.float(), batch.y)
        with torch.no_grad():
            if self.cache is not None:
                targets = self.teacher.soft_targets(batch.view, batch.index, self.kd.temperature)
            else:
                targets = self.teacher.soft_targets(batch.x, self.kd.temperature)
        return kd_loss(logits, targets.to(logits.device), batch.y, self.kd)


def optimizer_for(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def set_cosine_lr(optimizer: torch.optim.Optimizer, settings: TrainSettings, epoch: int) -> None:
    """Cosine decay over all epochs, for loops that rebuild their optimizer (pruning changes shapes)."""
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / settings.epochs))


def train_epoch(
    model,
    optimizer,
    data: Split,
    settings: TrainSettings,
    objective: Objective,
    generator,
    device,
    *,
    epoch: int,
    channels_last: bool = False,
) -> float:
    """One pass over `data` (epoch `epoch`, from 1); the caller puts the model in training mode. Returns
    the mean loss."""
    total, count = 0.0, 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    for x, y, index in batches(data, settings.batch_size, generator, device, with_index=True):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        recipe = settings.recipe if settings.augment else None
        batch = objective.batch(x, y, index, epoch=epoch, recipe=recipe, generator=generator)
        x = batch.x.contiguous(memory_format=torch.channels_last) if channels_last else batch.x
        with autocast:
            loss = objective.loss(model(x), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        count += len(y)
    return total / max(count, 1)


@torch.no_grad()
def logits(model: nn.Module, data: Split, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """The model's outputs for every image, in order; the caller puts the model in eval mode."""
    return torch.cat([model(x.to(device)).float().cpu() for x, _ in batches(data, batch_size, device=device)])


def predict(model: nn.Module, data: Split, device: torch.device) -> torch.Tensor:
    """Class predictions; the caller puts the model in eval mode."""
    return logits(model, data, device).argmax(dim=1)


def accuracy(model: nn.Module, data: Split, device: torch.device) -> float:
    return (predict(model, data, device) == data.y).float().mean().item()


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    settings: TrainSettings,
    device: torch.device,
    objective: Objective | None = None,
    name: str = "model",
) -> list[dict]:
    """Train with AdamW and a cosine schedule; return the per-epoch history (loss, val accuracy)."""
    objective = objective or Objective()
    channels_last = device.type == "cuda"  # faster convolutions on tensor cores
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    train = to_device(train, device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = optimizer_for(model, settings)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.epochs)
    history = []
    for epoch in range(1, settings.epochs + 1):
        model.train()
        loss = train_epoch(
            model, optimizer, train, settings, objective, generator, device, epoch=epoch, channels_last=channels_last
        )
        schedule.step()
        model.eval()
        val_acc = accuracy(model, val, device)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": val_acc})
        log.info("%s epoch %d/%d loss %.4f val_acc %.4f", name, epoch, settings.epochs, loss, val_acc)
    return history

"""The teachers' outputs computed once: each member's logits on fixed views of the images students distil from,
the training images then the transfer set's (`Dataset.transfer`). View 0 is the images as stored, the others
rotated and shifted at random, as training augments them, so that a student learns from the ensemble on the very
image it sees without running the teachers every epoch."""

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distillery import augment, combine
from distillery.augment import Recipe, Views
from distillery.combine import Combination
from distillery.data import Split, batches
from distillery.errors import DistilleryError
from distillery.files import atomic_file


@dataclass(frozen=True)
class TeacherOutputs:
    augmentations: Views  # views x N: each view of each image (view 0: the images as stored)
    logits: torch.Tensor  # views x N x members x classes
    combination: Combination | None = None  # how soft_targets joins the members (None: the mean of probabilities)

    @property
    def views(self) -> int:
        return len(self.augmentations.theta)

    def view(self, epoch: int, augment: bool) -> int:
        """The view epoch `epoch` (from 1) trains on: the augmented views in turn, or the images as stored."""
        return 1 + (epoch - 1) % (self.views - 1) if augment else 0

    def images(self, x: torch.Tensor, view: int, index: torch.Tensor) -> torch.Tensor:
        """View `view` of the images at positions `index`, given those images as stored (`x`)."""
        return x if view == 0 else augment.apply(x, self.augmentations[view, index.cpu()])

    def member(self, place: int) -> "TeacherOutputs":
        """The outputs of one member alone (its place among the members), on the same views."""
        return TeacherOutputs(self.augmentations, self.logits[:, :, place : place + 1])

    def combined(self, combination: Combination) -> "TeacherOutputs":
        """The same outputs, joined by `combination`."""
        return replace(self, combination=combination)

    def soft_targets(self, view: int, index: torch.Tensor, temperature: float) -> torch.Tensor:
        """The members' outputs at `temperature`, joined as `Ensemble.soft_targets` joins them."""
        combination = self.combination or combine.equal("mean_probabilities", self.logits.shape[2])
        return combination.probabilities(self.logits[view, index.cpu()], temperature)


VIEW = "view."  # the prefix of the views' tensors in the file


@torch.no_grad()
def compute(
    members: list[nn.Module],
    images: Split,
    *,
    views: int,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    batch_size: int = 512,
) -> TeacherOutputs:
    """Each member's logits on view 0 and `views` (at least 1) random views of every image of `images` (members in
    eval mode), drawn as `recipe` says. The views are made in float32 and only the members run under CUDA's
    autocast, so that a view is exactly the image `TeacherOutputs.images` gives the student."""
    if views < 1:
        raise ValueError(f"views must be at least 1, not {views}")
    generator = torch.Generator().manual_seed(seed)
    n, aspect = len(images), images.images.shape[-1] / images.images.shape[-2]
    drawn = Views.stack([augment.identity(n)] + [augment.draw(n, aspect, recipe, generator) for _ in range(views)])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    per_batch = []
    for x, _, index in batches(images, batch_size, device=device, with_index=True):  # in order: index 0, 1, ...
        x = x.to(device)
        per_view = []
        for v in range(views + 1):
            view = augment.apply(x, drawn[v, index]) if v else x
            with autocast:
                per_view.append(torch.stack([m(view).float() for m in members], dim=1).cpu())
        per_batch.append(torch.stack(per_view))
    return TeacherOutputs(drawn, torch.cat(per_batch, dim=1))


def save(outputs: TeacherOutputs, path: Path) -> None:
    """Write `outputs` as safetensors, atomically."""
    with atomic_file(path) as tmp:
        save_file(outputs.augmentations.to_tensors(VIEW) | {"logits": outputs.logits}, str(tmp))


def load(path: Path, transfer: Split) -> TeacherOutputs:
    """The outputs saved at `path`, checked against the images they were computed on (`Dataset.transfer`)."""
    try:
        tensors = load_file(str(path))
        outputs = TeacherOutputs(Views.from_tensors(tensors, VIEW), tensors["logits"])
    except (OSError, SafetensorError, KeyError) as e:
        raise DistilleryError(f"{path} is missing or damaged ({e}); rerun the train_teachers stage.") from e
    drawn = outputs.augmentations.theta.shape[:2]
    if drawn[1] != len(transfer) or outputs.logits.shape[:2] != drawn:
        raise DistilleryError(
            f"{path} holds teacher outputs for {drawn[1]} images, not the {len(transfer)} training and "
            "unlabeled images of this dataset; rerun the train_teachers stage."
        )
    return outputs

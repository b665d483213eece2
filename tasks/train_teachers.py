"""Train teachers: the listed ones, mixed freely. Architectures (built-in or torchvision's) train here, each with
its own seed (its place in the list added to the stage's); users' trained torch models are used as they are or
fine-tuned; ONNX classifiers from any framework are wrapped into the run's interface, never trained. Every user
teacher is checked before anything trains. Then the teachers' outputs are cached for the students."""

import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from distillery import checkpoint, combine, models, onnx_export, onnx_teacher, teacher_outputs
from distillery.data import Dataset, load_dataset
from distillery.errors import DistilleryError
from distillery.files import atomic_dir, file_digest, inside, write_json
from distillery.names import TORCHVISION
from distillery.onnx_teacher import OnnxClassifier, PixelFormat
from distillery.training import accuracy, fit, logits, seeded
from project.artifacts import require_valid, teacher_in
from project.config import AugmentConfig, CheckpointTeacher, OnnxTeacher, PixelScaling, TeachersConfig
from project.layout import TEACHER, Layout
from project.settings import device, recipe, train_settings
from project.stage import Stage

log = logging.getLogger("distillery")
PIXEL_RANGES = {"0..1": (1.0, 0.0), "-1..1": (2.0, -1.0), "0..255": (255.0, 0.0)}  # scale, shift of 0..1 pixels


def teacher_names(config: TeachersConfig) -> list[str]:
    """`<index>_<kind>`, e.g. 0_small_resnet, 1_torchvision-resnet50, 2_checkpoint-mine, 3_onnx-forest: unique
    even when an entry appears twice, and safe as a file name."""
    return [f"{i}_{slug(entry)}" for i, entry in enumerate(config.models)]


def slug(entry: str | CheckpointTeacher | OnnxTeacher) -> str:
    if isinstance(entry, CheckpointTeacher):
        return "checkpoint-" + safe_stem(entry.checkpoint)
    if isinstance(entry, OnnxTeacher):
        return "onnx-" + safe_stem(entry.onnx)
    return entry.replace(TORCHVISION, "torchvision-")


def safe_stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", path.stem)[:40]


def entry_error(config: TeachersConfig, index: int, problem: str) -> DistilleryError:
    """A bad teacher entry as one paragraph: which entry, what is wrong, what to change."""
    return DistilleryError(
        f"teachers.models[{index}] ({teacher_names(config)[index]}): {problem}. Nothing was trained."
    )


def user_file(config: TeachersConfig, index: int, path: Path, layout: Layout) -> Path:
    """A teacher file a user brings: it must be in data/teachers/, the stage's DVC dependency, so that a changed
    file retrains the teachers."""
    found = layout.root / path
    if not inside(found, layout.user_teachers):
        folder = layout.user_teachers.relative_to(layout.root)
        raise entry_error(
            config, index, f"{path} is not inside {folder}/; move it there (DVC tracks that folder for this stage)"
        )
    if not found.is_file():
        raise entry_error(config, index, f"{path} does not exist")
    return found


def scale_shift(entry: PixelScaling, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The scale and shift (one, or one a channel) that take the run's 0..1 pixels to the range `entry` declares."""
    if entry.scaling != "mean_std":
        return tuple((v,) for v in PIXEL_RANGES[entry.scaling])
    if {len(entry.mean), len(entry.std)} - {1, channels}:
        raise ValueError(f"mean and std need one value or one per channel ({channels})")
    mean, std = (np.broadcast_to(np.array(v, dtype=float), channels) for v in (entry.mean, entry.std))
    return tuple((1 / std).tolist()), tuple((-mean / std).tolist())


def pixel_format(entry: OnnxTeacher, channels: int) -> PixelFormat:
    scale, shift = scale_shift(entry, channels)
    return PixelFormat(entry.layout, scale, shift, entry.outputs == "probabilities", entry.output)


def teacher_spec(config: TeachersConfig, index: int, data: Dataset) -> dict:
    """The spec of teacher `index` (an architecture or a checkpoint): for a checkpoint, behind its pixel scaling
    unless that is the run's 0..1."""
    entry = config.models[index]
    if not isinstance(entry, CheckpointTeacher):
        return spec_for(entry, data)
    spec = spec_for(entry.arch, data)
    if entry.scaling == "0..1":
        return spec
    try:
        scale, shift = scale_shift(entry, data.in_channels)
    except ValueError as e:
        raise entry_error(config, index, str(e)) from e
    return spec | {"input_scale": list(scale), "input_shift": list(shift)}


def wrapped_onnx(config: TeachersConfig, index: int, layout: Layout, data: Dataset, out: Path) -> OnnxClassifier:
    """The ONNX teacher `index` wrapped into the run's interface at `out`, after checking what it gives on the
    validation images."""
    entry = config.models[index]
    path = user_file(config, index, entry.onnx, layout)
    try:
        model = onnx.load(str(path))
    except DecodeError as e:
        raise entry_error(config, index, f"{entry.onnx} is not an ONNX file ({e})") from e
    try:
        fmt = pixel_format(entry, data.in_channels)
        wrapped = onnx_teacher.wrap(
            model, fmt, image_shape=tuple(data.train.images.shape[1:]), num_classes=data.num_classes
        )
        onnx_teacher.write(wrapped, out)
        teacher = OnnxClassifier(out)
        scores = logits(teacher, data.val, torch.device("cpu"))
    except (ValueError, DistilleryError) as e:
        out.unlink(missing_ok=True)
        raise entry_error(config, index, f"{entry.onnx}: {e}") from e
    except onnx_teacher.RUN_ERRORS as e:
        out.unlink(missing_ok=True)
        raise entry_error(
            config, index, f"{entry.onnx}: onnxruntime cannot run it on the validation images ({e})"
        ) from e
    problem = output_problem(scores, fmt, data.num_classes)
    if problem:
        out.unlink()
        raise entry_error(config, index, f"{entry.onnx}: {problem}")
    return teacher


def output_problem(scores: torch.Tensor, fmt: PixelFormat, num_classes: int) -> str | None:
    """What is wrong with a wrapped classifier's scores on the validation images, if anything."""
    if scores.shape[1] != num_classes:
        return f"it gives {scores.shape[1]} class scores; the data has {num_classes} classes"
    if not torch.isfinite(scores).all():
        return "it gives scores that are not finite (NaN or infinite)"
    sums = scores.exp().sum(dim=1) if fmt.probabilities else scores.sum(dim=1)
    is_probabilities = bool(((sums - 1).abs() < 1e-3).all()) and (fmt.probabilities or bool((scores >= 0).all()))
    if fmt.probabilities and not is_probabilities:
        return (
            f"its scores are declared probabilities but sum to {sums.min():.3g}..{sums.max():.3g}; set outputs: logits"
        )
    if not fmt.probabilities and is_probabilities:
        return "its scores are probabilities (in 0..1, summing to 1 for every image); set outputs: probabilities"
    return None


def user_weights(config: TeachersConfig, index: int, model: nn.Module, layout: Layout) -> None:
    """Load checkpoint teacher `index`'s state dict into `model`: for a torchvision architecture, into the builder's
    model, or into the whole adapted model as a Distillery run saves its teachers (keys `net.`...). A pickle and a
    state dict that fits neither are refused."""
    entry = config.models[index]
    path = user_file(config, index, entry.checkpoint, layout)
    try:
        weights = checkpoint.read_state_dict(path)
    except DistilleryError as e:
        raise entry_error(config, index, str(e).rstrip(".")) from e
    unscaled = model.model if isinstance(model, models.ScaledInput) else model
    target = unscaled.net if isinstance(unscaled, models.TorchvisionClassifier) else unscaled
    if target is not unscaled and not checkpoint.mismatches(unscaled, weights):
        target = unscaled  # a torchvision teacher of an earlier run, its 1x1 conv for other channel counts included
    elif problems := checkpoint.mismatches(target, weights):
        raise entry_error(
            config, index, f"{entry.checkpoint} does not fit {entry.arch}: {problems}; set the `arch` it was trained as"
        )
    if target is not unscaled and getattr(unscaled, "channels", None) is not None and not entry.fine_tune_epochs:
        raise entry_error(
            config,
            index,
            f"the data has {unscaled.in_channels} channels, which a 1x1 conv maps to the 3 that {entry.arch} takes; "
            "only training sets it, so give fine_tune_epochs",
        )
    target.load_state_dict(weights)


def check_teachers(config: TeachersConfig, layout: Layout, data: Dataset) -> None:
    """Every teacher as the stage will use it, before anything trains: each architecture (with a user's weights)
    takes two validation images; each ONNX classifier is wrapped and run on the validation images, and all of
    them are joined with a torch model into one ensemble graph, as the export stage joins the teachers."""
    images = data.val.head(2)
    with tempfile.TemporaryDirectory() as scratch:
        wrapped = {}
        for index, entry in enumerate(config.models):
            if isinstance(entry, OnnxTeacher):
                path = Path(scratch) / f"trial_teacher_{index}"  # an ONNX file
                wrapped[index] = wrapped_onnx(config, index, layout, data, path).path
                continue
            spec = teacher_spec(config, index, data)
            model = models.build(spec)
            if isinstance(entry, CheckpointTeacher):
                user_weights(config, index, model, layout)
            try:
                with torch.no_grad():
                    model.eval()(images)
            except (RuntimeError, AssertionError, ValueError) as e:
                shape = " x ".join(map(str, images.shape[1:]))
                raise entry_error(config, index, f"{spec['arch']} cannot take the data's {shape} images ({e})") from e
        if wrapped:
            trial_join(config, wrapped, images, data.num_classes, Path(scratch))


def trial_join(
    config: TeachersConfig, wrapped: dict[int, Path], images: torch.Tensor, num_classes: int, scratch: Path
) -> None:
    """Join the wrapped ONNX teachers (by their place in the list) and a torch model into one ensemble graph."""
    torch_member = scratch / "trial_torch.onnx"
    onnx_export.export(
        nn.Sequential(nn.Flatten(), nn.Linear(images[0].numel(), num_classes)).eval(), images, torch_member
    )
    members = [*wrapped.values(), torch_member]
    try:
        onnx_export.ensemble(members, scratch / "trial_ensemble.onnx", combine.equal("mean_logits", len(members)))
    except DistilleryError as e:
        names = ", ".join(f"teachers.models[{i}] ({teacher_names(config)[i]}: trial_teacher_{i})" for i in wrapped)
        raise DistilleryError(
            f"The ONNX teachers {names} cannot be joined with the torch teachers into one ensemble graph: {e}. "
            "Nothing was trained."
        ) from e


def spec_for(arch: str, data: Dataset) -> dict:
    return {"arch": arch, "in_channels": data.in_channels, "num_classes": data.num_classes}


def train_teacher(config: TeachersConfig, index: int, layout: Layout, out: Path, *, augment: AugmentConfig) -> dict:
    """Make teacher `index` in `out`: train it (seed `config.seed + index`), load and maybe fine-tune a user's
    weights (augmented as `augment` says), or wrap a user's ONNX classifier; write its weights or ONNX file and its
    record."""
    started = time.monotonic()
    entry, name = config.models[index], teacher_names(config)[index]
    data = load_dataset(layout.raw)
    history, source = [], None
    if isinstance(entry, OnnxTeacher):
        model = wrapped_onnx(config, index, layout, data, out / layout.onnx_teacher(TEACHER + name).name)
        arch, source = "onnx", layout.root / entry.onnx
    else:
        spec = teacher_spec(config, index, data)
        arch = spec["arch"]
        settings = replace(train_settings(config, augment), seed=config.seed + index)
        model = seeded(settings.seed, lambda: models.build(spec))
        if isinstance(entry, CheckpointTeacher):
            user_weights(config, index, model, layout)
            settings = replace(settings, epochs=entry.fine_tune_epochs, lr=entry.fine_tune_lr or settings.lr)
            source = layout.root / entry.checkpoint
        if settings.epochs:
            history = fit(model, data.train, data.val, settings, device(), name=name)
        checkpoint.save(model, spec, out / layout.checkpoint(TEACHER + name).name)
    result = {
        "name": name,
        "arch": arch,
        "params": models.count_params(model),
        "val_accuracy": accuracy(model.eval(), data.val, device()),
        "history": history,
        "source": source and {"path": str(source.relative_to(layout.root)), "sha256": file_digest(source)},
        "seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "process": f"{socket.gethostname()}:{os.getpid()}",
    }
    write_json(out / layout.record(TEACHER + name).name, result)
    return result


def training_size(entry: str | CheckpointTeacher | OnnxTeacher) -> int:
    """The parameters a teacher trains (0: none), to start the longest training first."""
    if isinstance(entry, OnnxTeacher) or (isinstance(entry, CheckpointTeacher) and not entry.fine_tune_epochs):
        return 0
    arch = entry.arch if isinstance(entry, CheckpointTeacher) else entry
    return models.count_params(models.build({"arch": arch, "in_channels": 1, "num_classes": 10}))


def run(config: TeachersConfig, augment: AugmentConfig, layout: Layout, map_fn: Callable = map) -> dict[str, float]:
    """Write data/models/teachers/: per teacher its weights (safetensors) or wrapped ONNX file and its record
    (JSON), and the teachers' outputs on fixed views of the training images (`cached_views`).

    `map_fn(train_one, indices)` runs `train_one(i)` for each teacher; the flow passes one that
    makes each a task run of its own, in turn or on a Dask cluster. The largest model comes first,
    so on a cluster the longest training starts at once."""
    require_valid(layout)
    largest_first = sorted(range(len(config.models)), key=lambda i: -training_size(config.models[i]))
    check_teachers(config, layout, load_dataset(layout.raw))
    with atomic_dir(layout.teachers) as out:
        results = list(map_fn(lambda i: train_teacher(config, i, layout, out, augment=augment), largest_first))
        if config.cached_views:
            cache_outputs(config, augment, layout, out)
    return {r["name"]: r["val_accuracy"] for r in results}


def cache_outputs(config: TeachersConfig, augment: AugmentConfig, layout: Layout, out: Path) -> None:
    """The trained teachers' outputs on `config.cached_views` random views of the training images and the transfer
    set's."""
    started = time.monotonic()
    members = [teacher_in(out, layout, TEACHER + name).eval() for name in teacher_names(config)]
    outputs = teacher_outputs.compute(
        [m.to(device()) for m in members],
        load_dataset(layout.raw).transfer,
        views=config.cached_views,
        recipe=recipe(augment),
        seed=config.seed,
        device=device(),
    )
    teacher_outputs.save(outputs, out / layout.teacher_outputs.name)
    log.info(
        "teacher outputs on the stored images and %d random views cached in %.1f s",
        outputs.views - 1,
        time.monotonic() - started,
    )


STAGE = Stage(run, reads=(Layout.raw, Layout.validation, Layout.user_teachers), writes=(Layout.teachers,))

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

"""Train teachers: the listed architectures, each with its own seed (its place in the list added to the stage's);
any map function runs them. Then their outputs are cached for the students."""

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from distillery import checkpoint, models, teacher_outputs
from distillery.data import load_dataset
from distillery.files import atomic_dir, write_json
from distillery.training import accuracy, fit, seeded
from project.artifacts import require_valid
from project.config import TeachersConfig
from project.layout import TEACHER, Layout
from project.settings import device, train_settings

log = logging.getLogger("distillery")


def teacher_names(config: TeachersConfig) -> list[str]:
    """`<index>_<arch>`: unique even when an architecture appears twice."""
    return [f"{i}_{arch}" for i, arch in enumerate(config.models)]


def train_teacher(config: TeachersConfig, index: int, layout: Layout, out: Path) -> dict:
    """Train teacher `index` with seed `config.seed + index`; write its weights and history to `out`."""
    started = time.monotonic()
    name = teacher_names(config)[index]
    data = load_dataset(layout.raw)
    spec = {"arch": config.models[index], "in_channels": data.in_channels, "num_classes": data.num_classes}
    settings = replace(train_settings(config), seed=config.seed + index)
    model = seeded(settings.seed, lambda: models.build(spec))
    history = fit(model, data.train, data.val, settings, device(), name=name)
    checkpoint.save(model, spec, out / layout.checkpoint(TEACHER + name).name)
    result = {
        "name": name,
        "arch": spec["arch"],
        "params": models.count_params(model),
        "val_accuracy": accuracy(model.eval(), data.val, device()),
        "history": history,
        "seconds": round(time.monotonic() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "process": f"{socket.gethostname()}:{os.getpid()}",
    }
    write_json(out / layout.record(TEACHER + name).name, result)
    return result


SECTIONS = ("teachers",)


def run(config: TeachersConfig, layout: Layout, map_fn: Callable = map) -> dict[str, float]:
    """Write data/models/teachers/: one safetensors and one history JSON per teacher, and the teachers'
    outputs on fixed views of the training images (`cached_views`).

    `map_fn(train_one, indices)` runs `train_one(i)` for each teacher; the flow passes one that
    makes each a task run of its own, in turn or on a Dask cluster. The largest model comes first,
    so on a cluster the longest training starts at once."""
    require_valid(layout)
    largest_first = sorted(
        range(len(config.models)),
        key=lambda i: (
            -models.count_params(models.build({"arch": config.models[i], "in_channels": 1, "num_classes": 10}))
        ),
    )
    with atomic_dir(layout.teachers) as out:
        results = list(map_fn(lambda i: train_teacher(config, i, layout, out), largest_first))
        if config.cached_views:
            cache_outputs(config, layout, out)
    return {r["name"]: r["val_accuracy"] for r in results}


def cache_outputs(config: TeachersConfig, layout: Layout, out: Path) -> None:
    """The trained teachers' outputs on `config.cached_views` random views of the training images."""
    started = time.monotonic()
    members = [checkpoint.load(out / layout.checkpoint(TEACHER + n).name)[0].eval() for n in teacher_names(config)]
    outputs = teacher_outputs.compute(
        [m.to(device()) for m in members],
        load_dataset(layout.raw).train,
        views=config.cached_views,
        seed=config.seed,
        device=device(),
    )
    teacher_outputs.save(outputs, out / layout.teacher_outputs.name)
    log.info(
        "teacher outputs on the stored images and %d random views cached in %.1f s",
        outputs.views - 1,
        time.monotonic() - started,
    )


if __name__ == "__main__":
    from project.stage_cli import main

    main(run, SECTIONS)

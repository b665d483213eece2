"""Distill: the student learns from the ensemble's averaged soft targets; the same student
trained alone on hard labels, with the same seed and recipe, is the baseline."""

import logging

from distillery import checkpoint, models
from distillery.data import load_dataset
from distillery.files import atomic_dir
from distillery.training import accuracy, fit, make_loss, seeded
from tasks.config import DistillConfig, KDConfig
from tasks.layout import Layout
from tasks.runtime import device, kd_settings, train_settings, write_json
from tasks.teachers import load_ensemble

log = logging.getLogger("distillery")


def run(config: DistillConfig, kd: KDConfig, layout: Layout) -> dict:
    """Write data/models/student/: student_alone and student_kd (safetensors + history JSON)."""
    data = load_dataset(layout.dataset)
    ensemble = load_ensemble(layout).to(device())
    spec = {"arch": "student_cnn", "in_channels": data.in_channels, "num_classes": data.num_classes,
            "widths": config.widths}
    settings = train_settings(config)
    results = {}
    with atomic_dir(layout.student) as out:
        for name, teacher in (("student_alone", None), ("student_kd", ensemble)):
            model = seeded(config.seed, lambda: models.build(spec))
            loss = make_loss(teacher, kd_settings(kd))
            history = fit(model, data.train, data.val, settings, device(), loss, name=name)
            checkpoint.save(model, spec, out / f"{name}.safetensors")
            results[name] = {"params": models.count_params(model),
                             "val_accuracy": accuracy(model.eval(), data.val, device()), "history": history}
            write_json(out / f"{name}.json", results[name])
    return {name: r["val_accuracy"] for name, r in results.items()}


if __name__ == "__main__":
    from tasks.cli import main

    main(run, ("distill", "kd"))

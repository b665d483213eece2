"""Distill: the ensemble's combination of its teachers (kd.combine) is chosen, fitted on the validation split
where it is fitted; the student learns from the ensemble's soft targets; the same student
trained alone on hard labels, with the same seed and recipe, is the baseline. With several
`width_scales`, the smallest student that meets the ship floor is kept."""

import logging

from distillery import checkpoint
from distillery.data import load_dataset
from distillery.files import atomic_dir, write_json
from distillery.training import accuracy
from project.config import DistillConfig, KDConfig, ShipConfig
from project.layout import Layout
from project.settings import device
from project.students import fit_ensemble, load_teaching, train_student

log = logging.getLogger("distillery")


def scaled_widths(widths: list[int], scale: float) -> list[int]:
    """`widths` times `scale`, in multiples of 4 channels (at least 4)."""
    return [max(4, 4 * round(w * scale / 4)) for w in widths]


def candidate_widths(config: DistillConfig) -> list[list[int]]:
    """`widths` scaled by each of `width_scales`, smallest first."""
    found = {tuple(scaled_widths(config.widths, scale)) for scale in config.width_scales}
    return [list(w) for w in sorted(found, key=sum)]


SECTIONS = ("distill", "kd", "ship")


def run(config: DistillConfig, kd: KDConfig, ship: ShipConfig, layout: Layout) -> dict:
    """Write data/models/student/: student_alone and student_kd (safetensors + history JSON)."""
    data = load_dataset(layout.raw)
    ensemble, combination_record = fit_ensemble(layout, kd.combine, data.val)
    combination = ensemble.combination
    log.info("ensemble: %s, weights %s", combination.rule, [round(w, 3) for w in combination.weights])
    floor = ship.floor(accuracy(ensemble, data.val, device()))
    teaching = load_teaching(layout, data.transfer, combination)
    base = {
        "arch": "student_cnn",
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        "pooled_blocks": config.pooled_blocks,
    }
    search = []
    for widths in candidate_widths(config):
        kd_model, kd_result = train_student(
            {**base, "widths": widths}, data, config, kd=kd, teaching=teaching, name="student_kd"
        )
        search.append({k: kd_result[k] for k in ("widths", "params", "val_accuracy")})
        if kd_result["val_accuracy"] >= floor:
            break
    log.info("student widths %s chosen (floor %.4f val accuracy): %s", widths, floor, search)
    spec = {**base, "widths": widths}
    alone_model, alone_result = train_student(spec, data, config, kd=None, teaching=teaching, name="student_alone")
    kd_result |= {"width_search": search, "floor_val_accuracy": floor}
    with atomic_dir(layout.student) as out:
        write_json(out / layout.ensemble_combination.name, combination_record)
        for name, model, result in (("student_alone", alone_model, alone_result), ("student_kd", kd_model, kd_result)):
            checkpoint.save(model, spec, out / layout.checkpoint(name).name)
            write_json(out / layout.record(name).name, result)
    return {"widths": widths, "student_alone": alone_result["val_accuracy"], "student_kd": kd_result["val_accuracy"]}


if __name__ == "__main__":
    from project.stage_cli import main

    main(run, SECTIONS)

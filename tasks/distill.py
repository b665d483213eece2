"""Distill: the ensemble's combination of its teachers (kd.combine) is chosen, fitted on the validation split
where it is fitted; the student learns from the ensemble's soft targets; the same student
trained alone on hard labels, with the same seed and recipe, is the baseline. With several
`width_scales`, the smallest student that meets the ship floor is kept."""

import logging

from distillery import checkpoint, models
from distillery.data import load_dataset
from distillery.files import atomic_dir, write_json
from distillery.names import STUDENT_CNN
from distillery.training import accuracy
from project.config import AugmentConfig, DistillConfig, KDConfig, ShipConfig
from project.layout import Layout
from project.settings import device
from project.stage import Stage
from project.students import fit_ensemble, load_teaching, train_student

log = logging.getLogger("distillery")


def candidate_specs(config: DistillConfig, *, in_channels: int, num_classes: int) -> list[dict]:
    """The student `config` describes at each of its `width_scales`, smallest first, each size once."""
    base = {"arch": config.arch, "in_channels": in_channels, "num_classes": num_classes}
    if config.arch == STUDENT_CNN:
        base |= {"widths": config.widths, "pooled_blocks": config.pooled_blocks}
    else:  # pixels repeated, so its int8 copy's first quantizer sees the same values in every runtime; PyTorch's
        # "nearest" (unlike "nearest-exact") exports to an ONNX Resize that picks other pixels at 28 to 32
        base |= {"upscale": "nearest-exact"}
    specs = [models.scaled(base, scale) for scale in sorted(config.width_scales)]
    return [spec for i, spec in enumerate(specs) if spec not in specs[:i]]


SEARCH_RECORD = ("width_mult", "widths", "params", "val_accuracy")  # what the record says of each student tried


def run(config: DistillConfig, kd: KDConfig, ship: ShipConfig, augment: AugmentConfig, layout: Layout) -> dict:
    """Write data/models/student/: student_alone and student_kd (safetensors + history JSON)."""
    data = load_dataset(layout.raw)
    ensemble, combination_record = fit_ensemble(layout, kd.combine, data.val)
    combination = ensemble.combination
    log.info("ensemble: %s, weights %s", combination.rule, [round(w, 3) for w in combination.weights])
    floor = ship.floor(accuracy(ensemble, data.val, device()))
    teaching = load_teaching(layout, data.transfer, combination)
    search = []
    for spec in candidate_specs(config, in_channels=data.in_channels, num_classes=data.num_classes):
        kd_model, kd_result = train_student(
            spec, data, config, augment=augment, kd=kd, teaching=teaching, name="student_kd"
        )
        search.append({k: v for k, v in (spec | kd_result).items() if k in SEARCH_RECORD})
        if kd_result["val_accuracy"] >= floor:
            break
    log.info("student of %d params chosen (floor %.4f val accuracy): %s", kd_result["params"], floor, search)
    alone_model, alone_result = train_student(
        spec, data, config, augment=augment, kd=None, teaching=teaching, name="student_alone"
    )
    kd_result |= {"width_search": search, "floor_val_accuracy": floor}
    with atomic_dir(layout.student) as out:
        write_json(out / layout.ensemble_combination.name, combination_record)
        for name, model, result in (("student_alone", alone_model, alone_result), ("student_kd", kd_model, kd_result)):
            checkpoint.save(model, spec, out / layout.checkpoint(name).name)
            write_json(out / layout.record(name).name, result)
    return {
        "widths": kd_result["widths"],
        "student_alone": alone_result["val_accuracy"],
        "student_kd": kd_result["val_accuracy"],
    }


STAGE = Stage(
    run, reads=(Layout.raw, Layout.teachers), writes=(Layout.student,), uses={"ship": ("max_accuracy_drop_pp",)}
)

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

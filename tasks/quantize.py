"""Quantize: int8 quantization-aware fine-tuning of the pruned student (torchao PT2E), with KD."""

import copy
import logging

import torch

from distillery import checkpoint
from distillery.data import load_dataset
from distillery.files import atomic_dir, write_json
from distillery.quantize import convert, prepare_qat, qat_finetune
from distillery.training import Objective, accuracy
from project.config import AugmentConfig, KDConfig, QuantizeConfig
from project.layout import Layout
from project.settings import device, kd_settings, train_settings
from project.stage import Stage
from project.students import load_teaching, trained_on, training_images

log = logging.getLogger("distillery")


def run(config: QuantizeConfig, kd: KDConfig, augment: AugmentConfig, layout: Layout) -> dict:
    """Write data/models/int8/: the int8 student as its quantization-aware training state (safetensors) and its
    history."""
    data = load_dataset(layout.raw)
    model, spec = checkpoint.load(layout.checkpoint("pruned"))
    prepared = prepare_qat(model, data.train.head(2))
    objective = Objective(load_teaching(layout, data.transfer), kd_settings(kd))
    images = training_images(data, objective)
    history = qat_finetune(prepared, images, data.val, train_settings(config, augment), objective, device())
    prepared.cpu()
    int8 = convert(copy.deepcopy(prepared))
    result = {
        "val_accuracy_fake_quant": history[-1]["val_accuracy"],
        "val_accuracy_int8": accuracy(int8, data.val, torch.device("cpu")),
        "trained_on": trained_on(data, images),
        "history": history,
    }
    log.info(
        "QAT done: fake-quant val %.4f, int8 val %.4f", result["val_accuracy_fake_quant"], result["val_accuracy_int8"]
    )
    with atomic_dir(layout.int8) as out:
        checkpoint.save(prepared, {**spec, "quantization": "x86_int8_qat"}, out / layout.checkpoint("int8").name)
        write_json(out / layout.record("int8").name, result)
    return {k: v for k, v in result.items() if k != "history"}


STAGE = Stage(run, reads=(Layout.raw, Layout.teachers, Layout.student, Layout.pruned), writes=(Layout.int8,))

if __name__ == "__main__":
    from project.stage_cli import main

    main(STAGE)

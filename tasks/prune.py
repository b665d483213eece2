"""Prune: gradual structured channel pruning of the distilled student, fine-tuned with KD."""

from distillery import checkpoint, models
from distillery.data import load_dataset
from distillery.files import atomic_dir
from distillery.pruning import prune_gradually
from distillery.training import accuracy, make_loss
from tasks.config import KDConfig, PruneConfig
from tasks.layout import Layout
from tasks.runtime import device, kd_settings, train_settings, write_json
from tasks.teachers import load_ensemble


def run(config: PruneConfig, kd: KDConfig, layout: Layout) -> dict:
    """Write data/models/pruned/: a physically smaller student (new widths in its spec)."""
    data = load_dataset(layout.dataset)
    model, spec = checkpoint.load(layout.student / "student_kd.safetensors")
    before = models.count_params(model)
    loss = make_loss(load_ensemble(layout).to(device()), kd_settings(kd))
    history = prune_gradually(model, data.train, data.val, config.ratio, config.steps, config.round_to,
                              train_settings(config), loss, device())
    spec = {**spec, "widths": model.widths()}
    result = {"params_before": before, "params": models.count_params(model), "widths": spec["widths"],
              "val_accuracy": accuracy(model.eval(), data.val, device()), "history": history}
    with atomic_dir(layout.pruned) as out:
        checkpoint.save(model, spec, out / "pruned.safetensors")
        write_json(out / "pruned.json", result)
    return {k: result[k] for k in ("params_before", "params", "widths", "val_accuracy")}


if __name__ == "__main__":
    from tasks.cli import main

    main(run, ("prune", "kd"))

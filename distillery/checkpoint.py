"""Weights as safetensors with the model spec in the metadata: loading never runs code."""

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distillery import models
from distillery.errors import DistilleryError
from distillery.files import atomic_file


def save(model: nn.Module, spec: dict, path: Path) -> None:
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}  # unshare
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={"spec": json.dumps(spec)})


def read_spec(path: Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["spec"])
    except (OSError, SafetensorError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise DistilleryError(f"Checkpoint {path} is missing or not a Distillery safetensors file ({e}).") from e


def load(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the model from the spec stored in the file and load its weights."""
    spec = read_spec(path)
    model = models.build(spec)
    try:
        weights = load_file(str(path))
    except SafetensorError as e:
        raise DistilleryError(f"Checkpoint {path} is damaged ({e}).") from e
    expected = model.state_dict()
    problems = [
        *(f"missing {k}" for k in expected.keys() - weights.keys()),
        *(f"unexpected {k}" for k in weights.keys() - expected.keys()),
        *(
            f"{k} is {tuple(weights[k].shape)}, not {tuple(expected[k].shape)}"
            for k in expected.keys() & weights.keys()
            if weights[k].shape != expected[k].shape
        ),
    ]
    if problems:
        raise DistilleryError(
            f"Checkpoint {path} does not match its architecture {spec['arch']!r}: "
            f"{len(problems)} problems, e.g. {'; '.join(sorted(problems)[:3])}. "
            "Rerun the stage that wrote it."
        )
    model.load_state_dict(weights)
    return model.eval(), spec

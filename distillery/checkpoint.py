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
    if problems := mismatches(model, weights):
        raise DistilleryError(
            f"Checkpoint {path} does not match its architecture {spec['arch']!r}: {problems}. "
            "Rerun the stage that wrote it."
        )
    model.load_state_dict(weights)
    return model.eval(), spec


def mismatches(model: nn.Module, weights: dict) -> str | None:
    """How `weights` do not fit `model`'s state dict (a count and three examples), or None when they fit."""
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
    return f"{len(problems)} problems, e.g. {'; '.join(sorted(problems)[:3])}" if problems else None


PICKLE_STARTS = (b"\x80", b"PK\x03\x04")  # a pickle's protocol byte; torch.save's zip archive


def read_state_dict(path: Path) -> dict:
    """The tensors of a safetensors file, never unpickling anything; a pickle is refused with how to convert it."""
    if not path.is_file():
        raise DistilleryError(f"{path} does not exist.")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        with path.open("rb") as f:
            start = f.read(4)
        if start.startswith(PICKLE_STARTS):
            raise DistilleryError(
                f"{path} is a pickle (torch.save's format), which can run code when loaded, so Distillery never "
                "opens one. Convert it where you trust it: safetensors.torch.save_file(torch.load(FILE), "
                "'NAME.safetensors') for a state dict (model.state_dict() for a whole model)."
            ) from e
        raise DistilleryError(f"{path} is not a safetensors file ({e}).") from e

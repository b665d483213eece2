"""Parameters: params.yaml is the complete default and cross-field rules hold (bad values through
the command lines: tests/test_bad_inputs.py)."""

import pytest
import yaml
from pydantic import ValidationError

from project.config import PipelineParams, load_params
from tests.conftest import ROOT


def test_params_yaml_is_the_complete_default():
    assert load_params(ROOT / "params.yaml") == PipelineParams()
    assert yaml.safe_load((ROOT / "params.yaml").read_text()) == PipelineParams().to_yaml_dict()


def test_prune_steps_cannot_exceed_epochs():
    with pytest.raises(ValidationError, match="must not exceed"):
        PipelineParams.model_validate({"prune": {"epochs": 2, "steps": 3}})


def test_keys_that_moved_are_refused_with_their_new_names():
    with pytest.raises(ValidationError, match="ship.latency_threads is now measure.latency_threads"):
        PipelineParams.model_validate({"ship": {"latency_threads": 2}})  # as the flow's parameters come in
    assert PipelineParams.model_validate({"measure": {"latency_threads": 2}}).measure.latency_threads == 2

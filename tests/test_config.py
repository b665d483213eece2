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

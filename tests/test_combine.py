"""How the ensemble joins its teachers (kd.combine): each rule's probabilities, the fitted weights, and the same
combination in torch, in the teachers' cached outputs and in the exported ONNX file."""

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillery import combine, onnx_export, teacher_outputs
from distillery.augment import Recipe
from distillery.data import Split, load_dataset
from distillery.errors import DistilleryError
from distillery.files import read_json, write_json
from distillery.models import Ensemble, WideCNN
from distillery.training import seeded
from project.layout import Layout
from project.students import load_teaching

CPU = torch.device("cpu")


def nll(combination: combine.Combination, logits: torch.Tensor, labels: torch.Tensor) -> float:
    return F.nll_loss(combination.probabilities(logits).log(), labels).item()


def test_each_rule_joins_the_members_as_it_says():
    logits = torch.randn(5, 3, 4)  # 5 images, 3 members, 4 classes
    probabilities = torch.softmax(logits / 2, dim=2)
    assert torch.allclose(combine.equal("mean_probabilities", 3).probabilities(logits, 2), probabilities.mean(dim=1))
    mean_logits = torch.softmax(logits.mean(dim=1) / 2, dim=1)
    assert torch.allclose(combine.equal("mean_logits", 3).probabilities(logits, 2), mean_logits)
    weighted = combine.Combination("fitted_weights", (0.5, 0.3, 0.2)).probabilities(logits, 2)
    assert torch.allclose(weighted, 0.5 * probabilities[:, 0] + 0.3 * probabilities[:, 1] + 0.2 * probabilities[:, 2])


def test_fitted_weights_favour_the_informative_member_and_lower_the_nll():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (400,), generator=generator)
    right = F.one_hot(labels, 10).float() * 3
    informative = [right + torch.randn(400, 10, generator=generator) * 1.5 for _ in range(2)]  # errors independent
    noise = torch.randn(400, 10, generator=generator) * 3
    logits = torch.stack([noise, *informative], dim=1)
    fitted = combine.fit_weights(logits, labels)
    assert fitted.rule == "fitted_weights" and sum(fitted.weights) == pytest.approx(1)
    assert fitted.weights[0] < 0.05 < min(fitted.weights[1:])  # the noise member gets almost nothing
    equal = nll(combine.equal("mean_probabilities", 3), logits, labels)
    alone = [nll(combine.equal("mean_probabilities", 1), logits[:, [m]], labels) for m in range(3)]
    assert nll(fitted, logits, labels) < min(equal, *alone)


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown combination"):
        combine.choose("median", torch.zeros(2, 2, 3), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "combination",
    [combine.Combination("fitted_weights", (0.8, 0.2)), combine.equal("mean_logits", 2)],
    ids=lambda c: c.rule,
)
def test_the_cache_and_the_onnx_file_join_the_members_as_the_ensemble_does(combination, tmp_path):
    members = [seeded(seed, lambda: WideCNN(1, 10, hidden=16)).eval() for seed in (0, 1)]
    ensemble = Ensemble(members, combination).eval()
    images = (torch.rand(12, 1, 8, 8) * 255).to(torch.uint8)
    train = Split(images, torch.arange(12), torch.zeros(12, dtype=torch.long))
    cached = teacher_outputs.compute(members, train, views=1, recipe=Recipe(), seed=0, device=CPU).combined(combination)
    x = images.float() / 255
    with torch.no_grad():
        expected = ensemble.soft_targets(x, 3.0)
        assert torch.allclose(cached.soft_targets(0, torch.arange(12), 3.0), expected, atol=1e-6)
    paths = [tmp_path / f"member{i}.onnx" for i in range(2)]
    for member, path in zip(members, paths, strict=True):
        onnx_export.export(member, x[:2], path)
    onnx_export.ensemble(paths, tmp_path / "ensemble.onnx", combination)
    scores = onnx_export.session(tmp_path / "ensemble.onnx").run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.allclose(scores, ensemble(x).numpy(), atol=1e-6)


def test_later_stages_learn_from_the_combination_distill_wrote(staged, tmp_path):
    """prune and quantize take their teaching from load_teaching without a combination: it must be the file's."""
    layout = Layout(tmp_path)
    for folder in (staged.raw, staged.teachers, staged.student):
        shutil.copytree(folder, layout.root / folder.relative_to(staged.root))
    record = read_json(layout.ensemble_combination) | {"rule": "fitted_weights", "weights": [0.9, 0.1]}
    write_json(layout.ensemble_combination, record)
    train = load_dataset(layout.raw).train
    index = torch.arange(32)
    targets = load_teaching(layout, train).soft_targets(0, index, 4.0)
    logits = teacher_outputs.load(layout.teacher_outputs, train).logits[0, :32]
    assert torch.allclose(targets, combine.Combination("fitted_weights", (0.9, 0.1)).probabilities(logits, 4.0))
    assert not torch.allclose(targets, combine.equal("mean_probabilities", 2).probabilities(logits, 4.0))
    write_json(layout.ensemble_combination, record | {"members": ["teacher_0_wide_cnn", "teacher_9_other"]})
    with pytest.raises(DistilleryError, match="not this run's teachers"):
        load_teaching(layout, train)

"""The distillation loss and the ensemble's soft targets against values worked out by hand with
numpy: KL from the teachers' distribution to the student's (not the reverse), scaled by T², plus
hard-label cross-entropy; the ensemble averages its members' probabilities, not their logits."""

import numpy as np
import pytest
import torch
from torch import nn

from distillery.models import Ensemble
from distillery.training import Batch, KDSettings, Objective, kd_loss

STUDENT = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5]])
TEACHER = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])
LABELS = np.array([0, 2])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def by_hand(temperature: float, alpha: float) -> float:
    student = softmax(STUDENT / temperature)
    kl = (TEACHER * (np.log(TEACHER) - np.log(student))).sum(axis=1).mean()  # KL(teacher || student)
    cross_entropy = -np.log(softmax(STUDENT)[np.arange(2), LABELS]).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * cross_entropy


@pytest.mark.parametrize(("temperature", "alpha"), [(1.0, 0.5), (4.0, 0.7), (2.0, 1.0), (3.0, 0.0)])
def test_kd_loss_matches_the_formula(temperature, alpha):
    loss = kd_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(LABELS),
        KDSettings(temperature=temperature, alpha=alpha),
    )
    assert loss.item() == pytest.approx(by_hand(temperature, alpha), rel=1e-6)


def test_kd_loss_is_not_the_reverse_kl():
    temperature = 4.0
    student = softmax(STUDENT / temperature)
    reverse = temperature**2 * (student * (np.log(student) - np.log(TEACHER))).sum(axis=1).mean()
    loss = kd_loss(
        torch.tensor(STUDENT),
        torch.tensor(TEACHER),
        torch.tensor(LABELS),
        KDSettings(temperature=temperature, alpha=1.0),
    )
    assert loss.item() != pytest.approx(reverse, rel=1e-3)


class Fixed(nn.Module):
    """A member that gives the same logits for every image."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor([logits])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_the_ensemble_averages_probabilities_at_the_temperature():
    members = np.array([[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    ensemble = Ensemble([Fixed(list(m)) for m in members])
    x = torch.zeros(2, 1, 8, 8)
    for temperature in (1.0, 4.0):
        expected = softmax(members / temperature).mean(axis=0)
        got = ensemble.soft_targets(x, temperature).numpy()
        assert np.allclose(got, expected, atol=1e-6) and np.allclose(got.sum(axis=1), 1)
        averaged_logits = softmax(members.mean(axis=0, keepdims=True) / temperature)[0]
        assert not np.allclose(got[0], averaged_logits, atol=1e-3)
    assert np.allclose(ensemble(x).numpy(), softmax(members).mean(axis=0), atol=1e-6)


def test_the_objective_distils_from_the_teachers_soft_targets():
    teacher = Ensemble([Fixed([1.0, 0.0, -1.0]), Fixed([0.0, 2.0, 0.0])])
    settings = KDSettings(temperature=2.0, alpha=0.6)
    x, logits, labels = torch.zeros(2, 1, 8, 8), torch.tensor(STUDENT), torch.tensor(LABELS)
    batch = Batch(x, labels, index=torch.arange(2), view=None)
    expected = kd_loss(logits, teacher.soft_targets(x, 2.0), labels, settings)
    assert Objective(teacher, settings).loss(logits, batch).item() == pytest.approx(expected.item())
    cross_entropy = -np.log(softmax(STUDENT)[np.arange(2), LABELS]).mean()
    for labels_only in (Objective(None, settings), Objective(teacher, KDSettings(temperature=2.0, alpha=0.0))):
        assert labels_only.loss(logits, batch).item() == pytest.approx(cross_entropy, rel=1e-6)

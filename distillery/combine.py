"""How an ensemble joins its members' outputs into class probabilities: the mean of their probabilities, the
softmax of the mean of their logits, or a weighted mean of their probabilities with the weights fitted on
held-out images (by negative log-likelihood)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillery.names import COMBINE_RULES as RULES


@dataclass(frozen=True)
class Combination:
    rule: str  # one of RULES
    weights: tuple[float, ...]  # one a member, summing to 1 (equal unless fitted)

    @property
    def averages_logits(self) -> bool:
        return self.rule == "mean_logits"

    def probabilities(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Class probabilities from the members' logits (N x members x classes), each softened by `temperature`."""
        weights = torch.tensor(self.weights, dtype=torch.float32, device=logits.device)[:, None]
        logits = logits.float() / temperature
        if self.averages_logits:
            return torch.softmax((logits * weights).sum(dim=1), dim=1)
        return (torch.softmax(logits, dim=2) * weights).sum(dim=1)

    def to_json(self) -> dict:
        return {"rule": self.rule, "weights": list(self.weights)}

    @classmethod
    def from_json(cls, record: dict) -> "Combination":
        return cls(record["rule"], tuple(record["weights"]))


def equal(rule: str, members: int) -> Combination:
    return Combination(rule, (1 / members,) * members)


def fit_weights(logits: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> Combination:
    """The weights (on the simplex, as a softmax of free scores) whose mean of the members' probabilities has
    the lowest negative log-likelihood of `labels`; the members' `logits` are N x members x classes."""
    log_probs = torch.log_softmax(logits.float(), dim=2)
    scores = torch.zeros(logits.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([scores], max_iter=steps, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        mixed = torch.logsumexp(log_probs + torch.log_softmax(scores, dim=0)[:, None], dim=1)
        loss = F.nll_loss(mixed, labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    return Combination("fitted_weights", tuple(torch.softmax(scores.detach(), dim=0).tolist()))


def choose(rule: str, logits: torch.Tensor, labels: torch.Tensor) -> Combination:
    """The combination `rule` names, fitted to the members' `logits` on held-out images where it is fitted."""
    if rule not in RULES:
        raise ValueError(f"unknown combination {rule!r}; known: {', '.join(RULES)}")
    return fit_weights(logits, labels) if rule == "fitted_weights" else equal(rule, logits.shape[1])

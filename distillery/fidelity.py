"""Does an ONNX file compute what its PyTorch model computes?

An fp32 file must match its model to within float rounding. For an int8 file: two int8 runtimes may
round a value that falls on a quantization tie differently (fp32 vs int32 accumulation, summation
order), which moves a logit by a step or two and flips images whose top two classes are nearly tied.
A broken export (a wrong scale, a dropped bias, a transposed weight) moves logits by many steps and
flips confident images too. So the comparison is in logit steps: one step is 1/255 of the range of
PyTorch's outputs on the data, the step of an 8-bit grid over the outputs.
"""

from dataclasses import asdict, dataclass

import numpy as np

from distillery.errors import DistilleryError


@dataclass(frozen=True)
class FidelityRule:
    """What a file must keep of its model's outputs; None: not checked."""

    min_top1_agreement: float  # share of images whose top class is the same
    max_error_steps: float | None = None  # bound on the largest |onnxruntime - PyTorch| difference
    max_mean_error_steps: float | None = None  # bound on the mean |onnxruntime - PyTorch| difference
    decisive_margin_steps: float | None = None  # images whose top-2 margin is at least this must keep their class


def top2_margin(logits: np.ndarray) -> np.ndarray:
    """Per image: the largest logit minus the second largest."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def compare_logits(reference: np.ndarray, candidate: np.ndarray, rule: FidelityRule) -> dict:
    """How far `candidate` (onnxruntime) is from `reference` (PyTorch), and whether `rule` holds."""
    if reference.ndim != 2 or len(reference) == 0 or reference.shape[1] < 2 or reference.shape != candidate.shape:
        raise DistilleryError(
            f"Cannot compare logits of shapes {reference.shape} and {candidate.shape}: "
            "expected the same images x classes, with at least one image and two classes."
        )
    step = float(reference.max() - reference.min()) / 255
    if step == 0:
        raise DistilleryError("The PyTorch model gives every image the same outputs: nothing to verify against.")
    error_steps = np.abs(candidate.astype(np.float64) - reference) / step
    margin_steps = top2_margin(reference) / step
    flipped = candidate.argmax(axis=1) != reference.argmax(axis=1)
    decisive = margin_steps >= (rule.decisive_margin_steps if rule.decisive_margin_steps is not None else np.inf)
    found = {
        "images": len(reference),
        "logit_step": step,
        "top1_agreement": 1 - float(flipped.mean()),
        "decisive_images": int(decisive.sum()),
        "decisive_flips": int((decisive & flipped).sum()),
        "largest_flipped_margin_steps": float(margin_steps[flipped].max(initial=0.0)),
        "mean_error_steps": float(error_steps.mean()),
        "max_error_steps": float(error_steps.max()),
        "rule": asdict(rule),
    }
    return found | {"failures": failures(found, rule)}


def failures(found: dict, rule: FidelityRule) -> list[str]:
    """Each way the comparison breaks the rule, in words; none when it holds."""
    broken = []
    if found["top1_agreement"] < rule.min_top1_agreement:
        broken.append(f"top-1 agreement {found['top1_agreement']:.4f} < {rule.min_top1_agreement}")
    if rule.max_error_steps is not None and found["max_error_steps"] > rule.max_error_steps:
        broken.append(f"largest difference {found['max_error_steps']:.3g} steps > {rule.max_error_steps}")
    if rule.max_mean_error_steps is not None and found["mean_error_steps"] > rule.max_mean_error_steps:
        broken.append(f"mean difference {found['mean_error_steps']:.3g} steps > {rule.max_mean_error_steps}")
    if found["decisive_flips"]:
        broken.append(
            f"{found['decisive_flips']} of {found['decisive_images']} images with a margin of at least "
            f"{rule.decisive_margin_steps} steps changed class"
        )
    return broken

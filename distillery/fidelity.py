"""Does an int8 ONNX file compute what the PyTorch int8 model computes?

Two int8 runtimes may round a value that falls on a quantization tie differently (fp32 vs int32
accumulation, summation order), which moves a logit by a step or two and flips images whose top two
classes are nearly tied. A broken export (a wrong scale, a dropped bias, a transposed weight) moves
logits by many steps and flips confident images too. So the comparison is in logit steps: one step
is 1/255 of the range of PyTorch's logits on the data, the step of an 8-bit grid over the outputs.
"""

from dataclasses import asdict, dataclass

import numpy as np

from distillery.errors import DistilleryError


@dataclass(frozen=True)
class FidelityRule:
    decisive_margin_steps: float  # images whose top-2 margin in PyTorch is at least this must keep their class
    max_mean_logit_error_steps: float  # bound on the mean |onnxruntime - PyTorch| logit difference


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
        raise DistilleryError("PyTorch's int8 model gives every image the same logits: nothing to verify against.")
    error_steps = np.abs(candidate.astype(np.float64) - reference) / step
    margin_steps = top2_margin(reference) / step
    flipped = candidate.argmax(axis=1) != reference.argmax(axis=1)
    decisive = margin_steps >= rule.decisive_margin_steps
    decisive_flips = int((decisive & flipped).sum())
    mean_error = float(error_steps.mean())
    return {
        "images": len(reference),
        "logit_step": step,
        "top1_agreement": 1 - float(flipped.mean()),
        "decisive_images": int(decisive.sum()),
        "decisive_flips": decisive_flips,
        "largest_flipped_margin_steps": float(margin_steps[flipped].max(initial=0.0)),
        "mean_error_steps": mean_error,
        "max_error_steps": float(error_steps.max()),
        "rule": asdict(rule),
        "passed": decisive_flips == 0 and mean_error <= rule.max_mean_logit_error_steps,
    }

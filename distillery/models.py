"""Teacher and student architectures, built from a small JSON-able spec.

A spec is a dict such as ``{"arch": "student_cnn", "in_channels": 1, "num_classes": 10,
"widths": [16, 32, 64], "pooled_blocks": 1}``. It travels with the weights (safetensors metadata), so a
checkpoint can be rebuilt without pickles.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from distillery import combine
from distillery.combine import Combination
from distillery.errors import DistilleryError
from distillery.names import TORCHVISION


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class WideCNN(nn.Module):
    """Two wide conv layers and a large fully connected head (most parameters sit there)."""

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 256):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, 32),
            nn.MaxPool2d(2),
            conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(c_in, c_out, stride),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet: three stages of two basic blocks each."""

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = [conv_bn_relu(in_channels, widths[0])]
        c_in = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, width, stride), BasicBlock(width, width, 1)]
            c_in = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def resnet18(in_channels: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stem for small single- or three-channel images."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=2, padding=1, bias=False)
    return model


MIN_SIDE = 32  # images smaller than this a side are scaled up for a torchvision model (its stem downsamples 4-32x)


class TorchvisionClassifier(nn.Module):
    """A torchvision classification builder, randomly initialised (nothing is downloaded), fitted to the data:
    `num_classes` outputs; gray images repeated to the three channels it takes (other channel counts mapped
    to three by a 1x1 conv); images smaller than it takes, or than MIN_SIDE, scaled up. Its state dict is
    the builder's model's under `net.` (plus `channels.` for the 1x1 conv)."""

    def __init__(self, name: str, in_channels: int, num_classes: int):
        super().__init__()
        self.in_channels = in_channels
        self.min_side = max(MIN_SIDE, *smallest_input(name))
        self.channels = None if in_channels in (1, 3) else nn.Conv2d(in_channels, 3, 1)
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if min(height, width) < self.min_side:
            scale = self.min_side / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if self.channels is not None:
            x = self.channels(x)
        elif self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out  # GoogLeNet and Inception add auxiliary outputs in training


def smallest_input(name: str) -> tuple[int, int]:
    """The smallest image (height, width) torchvision's weights for builder `name` say it takes."""
    try:
        weights = next(iter(torchvision.models.get_model_weights(name)))
    except (ValueError, StopIteration):
        return (1, 1)
    return tuple(weights.meta.get("min_size", (1, 1)))


class StudentCNN(nn.Module):
    """The student: conv blocks that each halve the resolution, global average pooling, a linear head.

    The first `pooled_blocks` blocks are a 3x3 conv at full resolution then 2x2 max pooling; the
    rest are one stride-2 3x3 conv, a quarter of the multiply-adds (several times faster in
    onnxruntime), so depth is cheap once the first block has seen the full-resolution image.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: list[int], pooled_blocks: int | None = None):
        super().__init__()
        pooled_blocks = len(widths) if pooled_blocks is None else pooled_blocks
        blocks: list[nn.Module] = []
        c_in = in_channels
        for i, width in enumerate(widths):
            if i < pooled_blocks:
                blocks += [conv_bn_relu(c_in, width), nn.MaxPool2d(2, ceil_mode=True)]
            else:
                blocks.append(conv_bn_relu(c_in, width, stride=2))
            c_in = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def widths(self) -> list[int]:
        return [m.out_channels for m in self.features.modules() if isinstance(m, nn.Conv2d)]


class Ensemble(nn.Module):
    """Joins its members' class probabilities as `combination` says (unset: their mean); the fp32 baseline the
    student replaces."""

    def __init__(self, members: list[nn.Module], combination: Combination | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.combination = combination or combine.equal("mean_probabilities", len(members))
        if len(self.combination.weights) != len(members):
            raise ValueError(f"{len(self.combination.weights)} weights for {len(members)} members")

    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        return self.combination.probabilities(torch.stack([m(x).float() for m in self.members], dim=1), temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.soft_targets(x, 1.0)


TEACHER_ARCHS: dict[str, Callable[[int, int], nn.Module]] = {
    "wide_cnn": WideCNN,
    "small_resnet": SmallResNet,
    "resnet18": resnet18,
}


class ScaledInput(nn.Module):
    """`model` fed the run's 0..1 pixels times `scale` plus `shift` (one, or one a channel): a user's model trained
    on another pixel range, e.g. ImageNet's mean and std. Its state dict is `model`'s under `model.`, with the two
    as buffers."""

    def __init__(self, model: nn.Module, scale: list[float], shift: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)


def build(spec: dict) -> nn.Module:
    """Build an untrained model from its spec; with `input_scale` and `input_shift`, behind a ScaledInput."""
    model = build_architecture(spec)
    return ScaledInput(model, spec["input_scale"], spec["input_shift"]) if "input_scale" in spec else model


def build_architecture(spec: dict) -> nn.Module:
    arch = spec["arch"]
    if arch.startswith(TORCHVISION):
        name = arch.removeprefix(TORCHVISION)
        if name not in torchvision.models.list_models(module=torchvision.models):  # classifiers only
            raise DistilleryError(f"Unknown architecture {arch!r}: torchvision has no classification builder {name!r}.")
        return TorchvisionClassifier(name, spec["in_channels"], spec["num_classes"])
    if arch == "student_cnn":
        return StudentCNN(spec["in_channels"], spec["num_classes"], list(spec["widths"]), spec.get("pooled_blocks"))
    if arch in TEACHER_ARCHS:
        return TEACHER_ARCHS[arch](spec["in_channels"], spec["num_classes"])
    raise DistilleryError(
        f"Unknown architecture {arch!r}; known: student_cnn, {', '.join(TEACHER_ARCHS)}, {TORCHVISION}NAME."
    )


def count_params(model: nn.Module) -> int:
    """Trainable and fixed weights: torch parameters, and the weights of members run in onnxruntime."""
    return sum(p.numel() for p in model.parameters()) + sum(getattr(m, "onnx_params", 0) for m in model.modules())

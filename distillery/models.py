"""Teacher and student architectures, built from a small JSON-able spec.

A spec is a dict such as ``{"arch": "student_cnn", "in_channels": 1, "num_classes": 10,
"widths": [16, 32, 64], "pooled_blocks": 1}``. It travels with the weights (safetensors metadata), so a
checkpoint can be rebuilt without pickles. A pruned torchvision model's spec holds the channel counts of each of its
layers (`layers`), which `build` makes anew at those sizes.
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
from distillery.names import STUDENT_CNN, TORCHVISION


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
# Every torchvision model trained here updates its batch norms' running statistics at PyTorch's default rate. Some
# builders use far less (MobileNetV3 and EfficientNet-B5 to B7 0.01, MNASNet 0.0003), tuned for long ImageNet runs:
# on small data their statistics lag the weights, and a model accurate in training mode is not in evaluation mode.
BATCH_NORM_MOMENTUM = 0.1


class TorchvisionClassifier(nn.Module):
    """A torchvision classification builder, randomly initialised (nothing is downloaded), fitted to the data:
    `num_classes` outputs; gray images repeated to the three channels it takes (other channel counts mapped
    to three by a 1x1 conv); images smaller than it takes, or than MIN_SIDE, scaled up (`upscale`: bilinear, or
    nearest: each pixel repeated, no arithmetic, so that an int8 copy's first quantizer sees the very pixels in every
    runtime); batch norms at BATCH_NORM_MOMENTUM. `width_mult`, for builders that take one (MobileNets), scales its
    channels. Its state dict is the builder's model's under `net.` (plus `channels.` for the 1x1 conv)."""

    def __init__(
        self,
        name: str,
        in_channels: int,
        num_classes: int,
        *,
        width_mult: float | None = None,
        upscale: str = "bilinear",
    ):
        super().__init__()
        self.in_channels, self.upscale = in_channels, upscale
        self.min_side = max(MIN_SIDE, *smallest_input(name))
        self.channels = None if in_channels in (1, 3) else nn.Conv2d(in_channels, 3, 1)
        options = {} if width_mult is None else {"width_mult": width_mult}
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
        for layer in self.net.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = BATCH_NORM_MOMENTUM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if min(height, width) < self.min_side:
            scale = self.min_side / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            x = F.interpolate(x, size=size, mode=self.upscale)
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
    """Build an untrained model from its spec; with `layers`, those layers at their sizes; with `input_scale` and
    `input_shift`, behind a ScaledInput."""
    model = build_architecture(spec)
    if "layers" in spec:
        resize_layers(model, spec["layers"])
    return ScaledInput(model, spec["input_scale"], spec["input_shift"]) if "input_scale" in spec else model


def build_architecture(spec: dict) -> nn.Module:
    arch = spec["arch"]
    if arch.startswith(TORCHVISION):
        name = arch.removeprefix(TORCHVISION)
        if name not in torchvision.models.list_models(module=torchvision.models):  # classifiers only
            raise DistilleryError(f"Unknown architecture {arch!r}: torchvision has no classification builder {name!r}.")
        options = {k: spec[k] for k in ("width_mult", "upscale") if k in spec}
        return TorchvisionClassifier(name, spec["in_channels"], spec["num_classes"], **options)
    if arch == STUDENT_CNN:
        return StudentCNN(spec["in_channels"], spec["num_classes"], list(spec["widths"]), spec.get("pooled_blocks"))
    if arch in TEACHER_ARCHS:
        return TEACHER_ARCHS[arch](spec["in_channels"], spec["num_classes"])
    raise DistilleryError(
        f"Unknown architecture {arch!r}; known: student_cnn, {', '.join(TEACHER_ARCHS)}, {TORCHVISION}NAME."
    )


def count_params(model: nn.Module) -> int:
    """Trainable and fixed weights: torch parameters, and the weights of members run in onnxruntime."""
    return sum(p.numel() for p in model.parameters()) + sum(getattr(m, "onnx_params", 0) for m in model.modules())


def scaled(spec: dict, scale: float) -> dict:
    """The student of `spec` at `scale` times its width: a student_cnn's widths in multiples of 4 channels (at least
    4), a torchvision builder's width multiplier."""
    if spec["arch"] == STUDENT_CNN:
        return {**spec, "widths": [max(4, 4 * round(w * scale / 4)) for w in spec["widths"]]}
    return {**spec, "width_mult": spec.get("width_mult", 1.0) * scale}


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def widths(model: nn.Module) -> list[int]:
    """Each conv layer's output channels, in order."""
    return [layer.out_channels for layer in conv_layers(model).values()]


def layer_sizes(model: nn.Module) -> dict[str, list[int]]:
    """The channel counts of each layer that pruning resizes: a conv's [in, out, groups], a batch norm's
    [features], a linear layer's [in, out]."""
    return {name: size for name, layer in model.named_modules() if (size := layer_size(layer))}


def layer_size(layer: nn.Module) -> list[int] | None:
    if isinstance(layer, nn.Conv2d):
        return [layer.in_channels, layer.out_channels, layer.groups]
    if isinstance(layer, nn.BatchNorm2d):
        return [layer.num_features]
    if isinstance(layer, nn.Linear):
        return [layer.in_features, layer.out_features]
    return None


def resize_layers(model: nn.Module, sizes: dict[str, list[int]]) -> None:
    """Make anew, with torch's default initialisation, each layer of `model` whose channel counts are not `sizes`'."""
    for name, size in sizes.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError as e:
            raise DistilleryError(f"The spec sizes a layer {name!r} that the architecture does not have.") from e
        if layer_size(layer) != size:
            model.set_submodule(name, resized(layer, size))


def resized(layer: nn.Module, size: list[int]) -> nn.Module:
    """A new layer like `layer` with the channel counts `size` (as `layer_size` gives them)."""
    if isinstance(layer, nn.Conv2d):
        c_in, c_out, groups = size
        return nn.Conv2d(
            c_in,
            c_out,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    if isinstance(layer, nn.BatchNorm2d):
        return nn.BatchNorm2d(size[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, nn.Linear):
        return nn.Linear(*size, bias=layer.bias is not None)
    raise DistilleryError(f"The spec sizes a {type(layer).__name__}, which is not a conv, batch norm or linear layer.")

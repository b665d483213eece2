"""Int8 quantization-aware training through torch.export + torchao PT2E (X86 quantizer).

A prepared (fake-quantized) model is rebuilt from the float model's spec, so QAT state
travels as a plain state dict in safetensors.
"""

import copy
import dataclasses
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

BATCH = torch.export.Dim("batch", min=1, max=4096)


def onnx_int8_config() -> QuantizationConfig:
    """torchao's X86 QAT config in the integer ranges an ONNX file can hold.

    Activations use all of uint8 (0..255): ONNX's QuantizeLinear has no quant_min/quant_max and
    saturates at the type's limits, so torch's reduced activation range (0..127) was lost in export
    and onnxruntime let values above it through. The reduced range goes to the weights instead
    (7-bit, -64..63, onnxruntime's own `reduce_range`), so u8 x s8 pair sums fit in int16 and cannot
    saturate in the VPMADDUBSW kernels of CPUs without VNNI.
    """
    config = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=False)
    weight = dataclasses.replace(config.weight, quant_min=-64, quant_max=63)
    return dataclasses.replace(config, weight=weight)


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of `model` in which each BatchNorm2d that follows a Conv2d in a Sequential is folded into
    that conv (its running statistics frozen). QAT then fine-tunes plain convs: folding conv + BN
    while converting makes torchao export ~100 pattern graphs, about 40 s even for a 2-layer model."""
    model = copy.deepcopy(model).eval()
    for block in model.modules():
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                    block[i], block[i + 1] = fuse_conv_bn_eval(block[i], block[i + 1]), nn.Identity()
    return model


def x86_quantizer() -> X86InductorQuantizer:
    """The X86 quantizer with `onnx_int8_config`, average pooling left in float. Quantized, an average keeps its
    input's scale, so the mean of 4 values falls on a rounding tie a quarter of the time; PyTorch and onnxruntime sum
    in different orders and broke such ties differently, and a MobileNet's squeeze-and-excitation blocks carried the
    differences to its outputs."""
    quantizer = X86InductorQuantizer().set_global(onnx_int8_config())
    for pooling in (nn.AdaptiveAvgPool2d, nn.AvgPool2d):
        quantizer.set_module_type_qconfig(pooling, None)
    return quantizer


def prepare_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Export the float model, its batch norms folded, and insert fake-quantize nodes (`x86_quantizer`), the
    images' own fixed to 0..1 (`fix_input_range`)."""
    exported = torch.export.export(fold_batch_norms(model), (example,), dynamic_shapes=({0: BATCH},)).module()
    prepared = prepare_qat_pt2e(exported, x86_quantizer())
    fix_input_range(prepared)
    return prepared


def fix_input_range(prepared: torch.fx.GraphModule) -> None:
    """The images are 0..1 by construction (`data.normalise`): their quantizer takes that range instead of observing
    it, so that it maps each 8-bit pixel to itself (scale 1/255, zero point 0). Observed, its range follows the
    training views, whose brightest pixel (augmented: warped, blurred, on other ink) may fall short of 1. A model
    that first resizes its images (a torchvision student) quantizes the resized ones: left as observed."""
    images = next(node for node in prepared.graph.nodes if node.op == "placeholder")
    quantizers = [n for n in images.users if n.op == "call_module" and n.target.startswith("activation_post_process")]
    if not quantizers:
        return
    fake_quantize = getattr(prepared, quantizers[0].target)
    fake_quantize.activation_post_process.min_val.fill_(0.0)
    fake_quantize.activation_post_process.max_val.fill_(1.0)
    scale, zero_point = fake_quantize.calculate_qparams()
    fake_quantize.scale.copy_(scale)
    fake_quantize.zero_point.copy_(zero_point)
    fake_quantize.disable_observer()


def to_train(model: torch.fx.GraphModule) -> None:
    move_exported_model_to_train(model)


def to_eval(model: torch.fx.GraphModule) -> None:
    move_exported_model_to_eval(model)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold fake-quantize nodes into quantize/dequantize ops with int8 weights."""
    to_eval(prepared)
    return convert_pt2e(prepared)


def qat_finetune(prepared: torch.fx.GraphModule, train, val, settings, objective, device) -> list[dict]:
    """Fine-tune the fake-quantized model; returns per-epoch loss and validation accuracy."""
    from distillery.training import accuracy, optimizer_for, train_epoch

    prepared.to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = optimizer_for(prepared, settings)
    history = []
    for epoch in range(1, settings.epochs + 1):
        to_train(prepared)
        loss = train_epoch(prepared, optimizer, train, settings, objective, generator, device, epoch=epoch)
        to_eval(prepared)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": accuracy(prepared, val, device)})
    return history


def load_prepared(path, example: torch.Tensor) -> tuple[torch.fx.GraphModule, dict]:
    """Rebuild a QAT model saved with `checkpoint.save`: same float graph, same fake-quant state."""
    from safetensors.torch import load_file

    from distillery import checkpoint, models

    spec = checkpoint.read_spec(path)
    prepared = prepare_qat(models.build(spec), example)
    state = OrderedDict(load_file(str(path)))
    # The module versions a state_dict() carries: without them torchao's observers take the state for version 1 and
    # reset their eps to float32's, so weight scales under the X86 config's 2**-12 were not clamped on reload.
    state._metadata = prepared.state_dict()._metadata
    prepared.load_state_dict(state)
    to_eval(prepared)
    return prepared, spec

"""Int8 quantization-aware training through torch.export + torchao PT2E (X86 quantizer).

A prepared (fake-quantized) model is rebuilt from the float model's spec, so QAT state
travels as a plain state dict in safetensors.
"""

import torch
from torch import nn
from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

BATCH = torch.export.Dim("batch", min=1, max=4096)


def prepare_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Export the float model and insert fake-quantize nodes (int8, reduced range for non-VNNI CPUs)."""
    exported = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: BATCH},)).module()
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=True)
    )
    return prepare_qat_pt2e(exported, quantizer)


def to_train(model: torch.fx.GraphModule) -> None:
    move_exported_model_to_train(model)


def to_eval(model: torch.fx.GraphModule) -> None:
    move_exported_model_to_eval(model)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Fold fake-quantize nodes into quantize/dequantize ops with int8 weights."""
    to_eval(prepared)
    return convert_pt2e(prepared)


def qat_finetune(prepared: torch.fx.GraphModule, train, val, settings, loss_fn, device) -> list[dict]:
    """Fine-tune the fake-quantized model; returns per-epoch loss and validation accuracy."""
    from distillery.training import accuracy, optimizer_for, train_epoch

    prepared.to(device)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = optimizer_for(prepared, settings)
    history = []
    for epoch in range(1, settings.epochs + 1):
        to_train(prepared)
        loss = train_epoch(prepared, optimizer, train, settings, loss_fn, generator, device)
        to_eval(prepared)
        history.append({"epoch": epoch, "loss": loss, "val_accuracy": accuracy(prepared, val, device)})
    return history


def load_prepared(path, example: torch.Tensor) -> tuple[torch.fx.GraphModule, dict]:
    """Rebuild a QAT model saved with `checkpoint.save`: same float graph, same fake-quant state."""
    from safetensors.torch import load_file

    from distillery import checkpoint, models

    spec = checkpoint.read_spec(path)
    prepared = prepare_qat(models.build(spec), example)
    prepared.load_state_dict(load_file(str(path)))
    to_eval(prepared)
    return prepared, spec

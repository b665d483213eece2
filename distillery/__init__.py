"""Torch-level library of Distillery: models, training, pruning, QAT and ONNX export.

Imports only torch, torchvision, numpy, onnx, onnxruntime, torchao, torch-pruning,
safetensors and the standard library, so it runs on machines without the orchestration stack.
"""

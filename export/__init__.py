"""Checkpoint -> ONNX: export, verification against torch, reduced precision, on-disk cache."""

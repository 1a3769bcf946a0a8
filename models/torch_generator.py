"""The reference backend: the generator in PyTorch eager mode, numpy in and out."""

from __future__ import annotations

import numpy as np
import torch

from models.checkpoint import load_torch_generator


class TorchGenerator:
    name = "torch"

    def __init__(self, checkpoint_path: str, face_size_px: int = 0):
        self.net = load_torch_generator(checkpoint_path, face_size_px)
        self.face_size = self.net.face_size

    def __call__(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        """(B,1,80,16) mels + (B,6,S,S) faces, float32 -> (B,3,S,S) float32 in [0, 1]."""
        with torch.inference_mode():
            return self.net(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()

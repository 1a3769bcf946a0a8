"""Wav2Lip_disc_qual: the visual-quality discriminator (a realism score per face)."""

import torch
from torch import nn

from models.layers import NoNormConv2d as N


class Wav2LipDiscQual(nn.Module):
    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(N(3, 32, 7, 1, 3)),
                nn.Sequential(N(32, 64, 5, (1, 2), 2), N(64, 64, 5, 1, 2)),
                nn.Sequential(N(64, 128, 5, 2, 2), N(128, 128, 5, 1, 2)),
                nn.Sequential(N(128, 256, 5, 2, 2), N(256, 256, 5, 1, 2)),
                nn.Sequential(N(256, 512, 3, 2, 1), N(512, 512, 3, 1, 1)),
                nn.Sequential(N(512, 512, 3, 2, 1), N(512, 512, 3, 1, 1)),
                nn.Sequential(N(512, 512, 3, 1, 0), N(512, 512, 1, 1, 0)),
            ]
        )
        self.binary_pred = nn.Sequential(nn.Conv2d(512, 1, 1, 1, 0), nn.Sigmoid())

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces (B,3,96,96) -> (B,1); only the lower half (rows 48..95) is looked at."""
        x = faces[:, :, faces.size(2) // 2 :]
        for block in self.face_encoder_blocks:
            x = block(x)
        return self.binary_pred(x).view(x.size(0), -1)

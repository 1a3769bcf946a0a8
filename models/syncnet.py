"""SyncNet_color, the lip-sync expert: 5 stacked lower-half frames vs a mel window."""

import torch
from torch import nn
from torch.nn import functional as F

from models.layers import Conv2d, res


class SyncNetColor(nn.Module):
    def __init__(self):
        super().__init__()
        self.face_encoder = nn.Sequential(
            Conv2d(15, 32, 7, 1, 3),
            Conv2d(32, 64, 5, (1, 2), 1),
            res(64),
            res(64),
            Conv2d(64, 128, 3, 2, 1),
            res(128),
            res(128),
            res(128),
            Conv2d(128, 256, 3, 2, 1),
            res(256),
            res(256),
            Conv2d(256, 512, 3, 2, 1),
            res(512),
            res(512),
            Conv2d(512, 512, 3, 2, 1),
            Conv2d(512, 512, 3, 1, 0),
            Conv2d(512, 512, 1, 1, 0),
        )
        self.audio_encoder = nn.Sequential(
            Conv2d(1, 32, 3, 1, 1),
            res(32),
            res(32),
            Conv2d(32, 64, 3, (3, 1), 1),
            res(64),
            res(64),
            Conv2d(64, 128, 3, 3, 1),
            res(128),
            res(128),
            Conv2d(128, 256, 3, (3, 2), 1),
            res(256),
            res(256),
            Conv2d(256, 512, 3, 1, 0),
            Conv2d(512, 512, 1, 1, 0),
        )

    def forward(self, mel: torch.Tensor, faces: torch.Tensor):
        """Returns (audio_embedding, face_embedding), each (B, 512) and L2-normalised."""
        audio = F.normalize(self.audio_encoder(mel).flatten(1), p=2, dim=1)
        face = F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)
        return audio, face

    @staticmethod
    def sync_score(audio: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(audio, face)

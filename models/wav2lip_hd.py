"""The community HD generators of the Wav2Lip family, written from their published layer shapes
(shared/spec/hd-layouts.md): the same design as the original with more blocks and larger faces.

  Wav2Lip256   8 encoder / 8 decoder blocks, faces 256x256
  Wav2Lip288   9 / 9 blocks, faces 288x288
  Wav2LipSAM   1024-channel blocks and spatial attention: before each skip join the decoder's
               output is re-weighted by a map computed from the skip feature. Trained at 384x384;
               runs at any multiple of 64 from 192 (the 1x1 audio embedding is broadcast over the
               deepest skip's grid by the attention), so the size is a constructor argument.
Module and attribute names follow the published checkpoints' tensor names exactly, so their
state dicts load with `strict=True`.
"""

import torch
from torch import nn

from models.layers import Conv2d, Conv2dTranspose, res
from models.layouts import Layout, check_sam_size
from models.wav2lip import Wav2LipFamily, audio_encoder_512, output_block


def down(cin: int, cout: int, k: int, s: int, p: int, n_res: int) -> nn.Sequential:
    """An encoder block: one conv (often strided), then `n_res` residual 3x3 convs."""
    return nn.Sequential(Conv2d(cin, cout, k, s, p), *(res(cout) for _ in range(n_res)))


def up(cin: int, cout: int, k: int, s: int, p: int, op: int, n_res: int) -> nn.Sequential:
    """A decoder block: one transposed conv, then `n_res` residual 3x3 convs."""
    return nn.Sequential(Conv2dTranspose(cin, cout, k, s, p, op), *(res(cout) for _ in range(n_res)))


def one_by_one(ch: int, n: int) -> list[Conv2d]:
    return [Conv2d(ch, ch, 1, 1, 0) for _ in range(n)]


class Wav2Lip256(Wav2LipFamily):
    face_size = 256
    layout = Layout.HD256

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                down(6, 16, 7, 1, 3, 0),  # 256
                down(16, 32, 3, 2, 1, 2),  # 128
                down(32, 64, 3, 2, 1, 3),  # 64
                down(64, 128, 3, 2, 1, 2),  # 32
                down(128, 256, 3, 2, 1, 2),  # 16
                down(256, 512, 3, 2, 1, 1),  # 8
                down(512, 512, 3, 2, 1, 1),  # 4
                nn.Sequential(Conv2d(512, 512, 4, 1, 0), *one_by_one(512, 1)),  # 1
            ]
        )
        self.audio_encoder = audio_encoder_512()
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(*one_by_one(512, 1)),  # 1
                up(1024, 512, 4, 1, 0, 0, 1),  # 4
                up(1024, 512, 3, 2, 1, 1, 1),  # 8
                up(1024, 512, 3, 2, 1, 1, 2),  # 16
                up(768, 384, 3, 2, 1, 1, 2),  # 32
                up(512, 256, 3, 2, 1, 1, 2),  # 64
                up(320, 128, 3, 2, 1, 1, 2),  # 128
                up(160, 64, 3, 2, 1, 1, 2),  # 256
            ]
        )
        self.output_block = output_block()


class Wav2Lip288(Wav2LipFamily):
    face_size = 288
    layout = Layout.HD288

    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                down(6, 16, 7, 1, 3, 0),  # 288
                down(16, 32, 5, 2, 2, 1),  # 144
                down(32, 32, 3, 2, 1, 2),  # 72
                down(32, 64, 3, 2, 1, 3),  # 36
                down(64, 128, 3, 2, 1, 2),  # 18
                down(128, 256, 3, 2, 1, 2),  # 9
                down(256, 512, 3, 2, 1, 1),  # 5
                nn.Sequential(Conv2d(512, 512, 3, 1, 0), *one_by_one(512, 1)),  # 3
                nn.Sequential(Conv2d(512, 512, 3, 1, 0), *one_by_one(512, 1)),  # 1
            ]
        )
        self.audio_encoder = audio_encoder_512()
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(*one_by_one(512, 1)),  # 1
                up(1024, 512, 3, 1, 0, 0, 1),  # 3
                up(1024, 512, 3, 2, 1, 0, 2),  # 5
                up(1024, 512, 3, 2, 1, 0, 2),  # 9
                up(768, 384, 3, 2, 1, 1, 2),  # 18
                up(512, 256, 3, 2, 1, 1, 2),  # 36
                up(320, 128, 3, 2, 1, 1, 2),  # 72
                up(160, 64, 3, 2, 1, 1, 2),  # 144
                up(96, 64, 3, 2, 1, 1, 2),  # 288
            ]
        )
        self.output_block = output_block()


class SpatialAttention(nn.Module):
    """A per-pixel weight in (0, 1) from a feature map's channel mean and channel max."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, 1, 3, bias=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat((f.mean(dim=1, keepdim=True), f.amax(dim=1, keepdim=True)), dim=1)
        return torch.sigmoid(self.conv1(pooled))


class AttentionGate(nn.Module):
    """The published `sam` module: holds the attention conv as `sa.conv1`."""

    def __init__(self):
        super().__init__()
        self.sa = SpatialAttention()

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.sa(skip) + x


class Wav2LipSAM(Wav2LipFamily):
    layout = Layout.SAM
    # The attention's 7x7 conv over a row-cropped skip spoils 3 rows at the top (more than the
    # two residual convs' 2), which the row-cropped decode must leave out.
    rows_lost_per_block = 3

    def __init__(self, face_size: int = 384):
        super().__init__()
        check_sam_size(face_size, "SAM generator face size")
        self.face_size = face_size
        self.sam = AttentionGate()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, 16, 7, 1, 3), *(res(16) for _ in range(3))),  # S
                down(16, 32, 3, 2, 1, 3),  # S/2
                down(32, 64, 3, 2, 1, 3),  # S/4
                down(64, 128, 3, 2, 1, 3),  # S/8
                down(128, 256, 3, 2, 1, 3),  # S/16
                down(256, 512, 3, 2, 1, 3),  # S/32
                down(512, 1024, 3, 2, 1, 3),  # S/64
                nn.Sequential(Conv2d(1024, 1024, 3, 1, 0), *one_by_one(1024, 2)),  # S/64 - 2
            ]
        )
        self.audio_encoder = nn.Sequential(
            *audio_encoder_512()[:10],  # the original's, up to its 256-channel stride-(3,2) conv
            res(256),
            res(256),
            Conv2d(256, 512, 3, 1, 1),
            res(512),
            res(512),
            Conv2d(512, 1024, 3, 1, 0),
            Conv2d(1024, 1024, 1, 1, 0),
        )
        # In the published checkpoints, never used by their forward pass: loaded, not run.
        self.audio_refine = nn.Sequential(*one_by_one(1024, 2))
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(*one_by_one(1024, 1)),
                up(2048, 1024, 3, 1, 0, 0, 1),
                up(2048, 1024, 3, 2, 1, 1, 2),
                up(1536, 768, 3, 2, 1, 1, 2),
                up(1024, 512, 3, 2, 1, 1, 2),
                up(640, 256, 3, 2, 1, 1, 2),
                up(320, 128, 3, 2, 1, 1, 2),
                up(160, 64, 3, 2, 1, 1, 2),
            ]
        )
        self.output_block = output_block()

    def join(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.sam(skip, x), skip), dim=1)

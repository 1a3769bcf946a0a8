"""The Wav2Lip generator: face (6x96x96) + mel (1x80x16) -> face (3x96x96) in [0, 1].

Split into `encode_face` and `decode` so that the face encoder's skip features, which depend
only on the avatar frame, can be computed once and reused (the ONNX export uses the same split).
`Wav2LipFamily` holds what every layout of the family shares (the split, the row-cropped decode,
the 5-D clip input); the HD layouts (models.wav2lip_hd) differ only in their layers and size.
"""

import torch
from torch import nn

from models.layers import Conv2d, Conv2dTranspose, res
from models.layouts import Layout

FACE_SIZE = 96
MEL_STEPS = 16
MEL_BANDS = 80
# The last four decoder blocks of every layout are a k3/s2/p1/op1 transposed conv and two 3x3
# residual convs (6x6 -> 96x96 in the original): these are the row-cropped ones.
CROPPED_BLOCKS = 4


def decoder_row_starts(first_row: int, face_size: int = FACE_SIZE, rows_lost: int = 2) -> list[int]:
    """First input row (at each block's input resolution) of the last four decoder blocks when
    only output rows >= `first_row` are wanted. Each such block is a k3/s2 transposed conv then
    convs that spoil `rows_lost` rows at the top of a cropped tensor (two 3x3 residual convs: 2;
    a 7x7 attention conv over the cropped skip: 3); the output block adds one more 3x3 conv."""
    if not 0 <= first_row < face_size:
        raise ValueError(f"first_row must be in 0..{face_size - 1}, got {first_row}")
    starts = []
    need = first_row - 1  # the output block's 3x3 conv
    for _ in range(CROPPED_BLOCKS):
        a = max(0, (need - rows_lost) // 2)  # the spoilt rows, then the stride-2 transposed conv
        starts.append(a)
        need = a
    return starts[::-1]


class Wav2LipFamily(nn.Module):
    """What all layouts share; subclasses make the layers and set `face_size` and `layout`."""

    face_size: int = FACE_SIZE
    layout: Layout = Layout.W96
    rows_lost_per_block = 2  # the two residual 3x3 convs after each up-sampling conv
    face_encoder_blocks: nn.ModuleList
    audio_encoder: nn.Module
    face_decoder_blocks: nn.ModuleList
    output_block: nn.Module

    def join(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """A decoder block's output joined to its skip feature (channel axis, decoder first)."""
        return torch.cat((x, skip), dim=1)

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """Face (B,6,S,S) -> the skip features, shallowest first."""
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, mel: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Mel (B,1,80,16) + skip features -> face (B,3,S,S)."""
        x = self.audio_encoder(mel)
        for block, skip in zip(self.face_decoder_blocks, reversed(feats)):
            x = self.join(block(x), skip)
        return self.output_block(x)

    def decode_rows(self, mel: torch.Tensor, feats: list[torch.Tensor], first_row: int) -> torch.Tensor:
        """`decode` restricted to output rows `first_row`..S-1: (B,3,S-first_row,S), equal to
        `decode(...)[:, :, first_row:]` to float rounding.

        The feathered paste shows only the lower face, yet the high-resolution decoder blocks
        are most of the work. Each of the last four (stride-2) blocks gets only the input rows its
        valid outputs depend on: a k3/s2/p1 transposed conv's output row 2a depends on input rows
        >= a only, and each 3x3 conv after it loses one row at the top of a cropped tensor (its
        zero padding is not the true neighbour). Counting back from the output gives each
        block's first input row; the rows lost to padding are never used.
        """
        starts = decoder_row_starts(first_row, self.face_size, self.rows_lost_per_block)
        first_cropped = len(self.face_decoder_blocks) - CROPPED_BLOCKS
        x = self.audio_encoder(mel)
        skips = list(reversed(feats))
        for b, (block, skip) in enumerate(zip(self.face_decoder_blocks, skips)):
            if b < first_cropped:
                x = self.join(block(x), skip)
                continue
            a = starts[b - first_cropped]
            offset = 0 if b == first_cropped else 2 * starts[b - first_cropped - 1]
            x = x[:, :, a - offset :]
            x = self.join(block(x), skip[:, :, 2 * a :])
        out = self.output_block(x)
        return out[:, :, first_row - 2 * starts[-1] :]

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        # The official model also takes (B, C, T, H, W) clips; fold time into the batch
        # time-major, exactly as the training code did, and unfold after.
        if face.dim() == 5:
            batch, steps = face.size(0), face.size(2)
            mel = torch.cat([mel[:, t] for t in range(mel.size(1))], dim=0)
            face = torch.cat([face[:, :, t] for t in range(steps)], dim=0)
            out = self.decode(mel, self.encode_face(face))
            return torch.stack(torch.split(out, batch, dim=0), dim=2)
        return self.decode(mel, self.encode_face(face))


def audio_encoder_512() -> nn.Sequential:
    """The original's audio encoder (mel 1x80x16 -> 512x1x1); the 256 and 288 layouts reuse it."""
    return nn.Sequential(
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
        Conv2d(256, 512, 3, 1, 0),
        Conv2d(512, 512, 1, 1, 0),
    )


def output_block() -> nn.Sequential:
    """Every layout's last block: 80 channels -> RGB in [0, 1]."""
    return nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())


class Wav2Lip(Wav2LipFamily):
    def __init__(self):
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, 16, 7, 1, 3)),
                nn.Sequential(Conv2d(16, 32, 3, 2, 1), res(32), res(32)),
                nn.Sequential(Conv2d(32, 64, 3, 2, 1), res(64), res(64), res(64)),
                nn.Sequential(Conv2d(64, 128, 3, 2, 1), res(128), res(128)),
                nn.Sequential(Conv2d(128, 256, 3, 2, 1), res(256), res(256)),
                nn.Sequential(Conv2d(256, 512, 3, 2, 1), res(512)),
                nn.Sequential(Conv2d(512, 512, 3, 1, 0), Conv2d(512, 512, 1, 1, 0)),
            ]
        )
        self.audio_encoder = audio_encoder_512()
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(512, 512, 1, 1, 0)),
                nn.Sequential(Conv2dTranspose(1024, 512, 3, 1, 0), res(512)),
                nn.Sequential(Conv2dTranspose(1024, 512, 3, 2, 1, 1), res(512), res(512)),
                nn.Sequential(Conv2dTranspose(768, 384, 3, 2, 1, 1), res(384), res(384)),
                nn.Sequential(Conv2dTranspose(512, 256, 3, 2, 1, 1), res(256), res(256)),
                nn.Sequential(Conv2dTranspose(320, 128, 3, 2, 1, 1), res(128), res(128)),
                nn.Sequential(Conv2dTranspose(160, 64, 3, 2, 1, 1), res(64), res(64)),
            ]
        )
        self.output_block = output_block()

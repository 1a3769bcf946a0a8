"""The Wav2Lip generator: face (6x96x96) + mel (1x80x16) -> face (3x96x96) in [0, 1].

Split into `encode_face` and `decode` so that the face encoder's skip features, which depend
only on the avatar frame, can be computed once and reused (the ONNX export uses the same split).
"""

import torch
from torch import nn

from models.layers import Conv2d, Conv2dTranspose, res

FACE_SIZE = 96
MEL_STEPS = 16
MEL_BANDS = 80
CROPPED_FROM_BLOCK = 3  # decoder blocks 3..6 (6x6 -> 96x96) are the row-cropped ones


def decoder_row_starts(first_row: int) -> list[int]:
    """First input row (at each block's input resolution) of decoder blocks 3..6 when only
    output rows >= `first_row` are wanted. Each such block is a k3/s2 transposed conv and two
    3x3 residual convs; the output block adds one more 3x3 conv."""
    if not 0 <= first_row < FACE_SIZE:
        raise ValueError(f"first_row must be in 0..{FACE_SIZE - 1}, got {first_row}")
    starts = []
    need = first_row - 1  # the output block's 3x3 conv
    for _ in range(4):
        a = max(0, (need - 2) // 2)  # two residual 3x3 convs, then the stride-2 transposed conv
        starts.append(a)
        need = a
    return starts[::-1]


class Wav2Lip(nn.Module):
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
            Conv2d(256, 512, 3, 1, 0),
            Conv2d(512, 512, 1, 1, 0),
        )
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
        self.output_block = nn.Sequential(Conv2d(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def encode_face(self, face: torch.Tensor) -> list[torch.Tensor]:
        """Face (B,6,96,96) -> the 7 skip features, shallowest first."""
        feats = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, mel: torch.Tensor, feats: list[torch.Tensor]) -> torch.Tensor:
        """Mel (B,1,80,16) + skip features -> face (B,3,96,96)."""
        x = self.audio_encoder(mel)
        for block, skip in zip(self.face_decoder_blocks, reversed(feats)):
            x = torch.cat((block(x), skip), dim=1)
        return self.output_block(x)

    def decode_rows(self, mel: torch.Tensor, feats: list[torch.Tensor], first_row: int) -> torch.Tensor:
        """`decode` restricted to output rows `first_row`..95: (B,3,96-first_row,96), equal to
        `decode(...)[:, :, first_row:]` to float rounding.

        The feathered paste shows only the lower face, yet the high-resolution decoder blocks
        are most of the work. Each stride-2 block (3..6) gets only the input rows its valid
        outputs depend on: a k3/s2/p1 transposed conv's output row 2a depends on input rows
        >= a only, and each 3x3 conv after it loses one row at the top of a cropped tensor (its
        zero padding is not the true neighbour). Counting back from the output gives each
        block's first input row; the rows lost to padding are never used.
        """
        starts = decoder_row_starts(first_row)
        x = self.audio_encoder(mel)
        skips = list(reversed(feats))
        for b, (block, skip) in enumerate(zip(self.face_decoder_blocks, skips)):
            if b < CROPPED_FROM_BLOCK:
                x = torch.cat((block(x), skip), dim=1)
                continue
            a = starts[b - CROPPED_FROM_BLOCK]
            offset = 0 if b == CROPPED_FROM_BLOCK else 2 * starts[b - CROPPED_FROM_BLOCK - 1]
            x = x[:, :, a - offset :]
            x = torch.cat((block(x), skip[:, :, 2 * a :]), dim=1)
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

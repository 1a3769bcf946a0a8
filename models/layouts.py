"""Which Wav2Lip-family generator a checkpoint holds, told by its tensor names and shapes (no torch).

Four layouts are known (facts: shared/spec/wav2lip.md and hd-layouts.md):
  wav2lip-96   the original, 96x96 faces
  hd-256       8 encoder / 8 decoder blocks, 256x256 faces
  hd-288       9 / 9 blocks, 288x288 faces
  sam          spatial attention before each skip join, 1024-channel blocks; trained at 384x384,
               but any multiple of 64 from 192 runs: the size is not in the weights, so the user
               gives it (`--face_size`), and it is part of every cache key made from the file.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from models.errors import LipsyncError

SAM_MIN_SIZE_PX = 192  # the deepest encoder block's 3x3 valid conv needs >= 3x3 after six halvings
SAM_SIZE_STEP_PX = 64  # six stride-2 encoder blocks


class Layout(enum.Enum):
    W96 = "wav2lip-96"
    HD256 = "hd-256"
    HD288 = "hd-288"
    SAM = "sam"


@dataclass(frozen=True)
class LayoutInfo:
    description: str
    module: str
    cls: str
    face_size_px: int | None  # None: not stored in the weights (the user gives it)
    trained_size_px: int


LAYOUTS = {
    Layout.W96: LayoutInfo("the original Wav2Lip generator (96x96)", "models.wav2lip", "Wav2Lip", 96, 96),
    Layout.HD256: LayoutInfo("an HD Wav2Lip generator, 256-pixel layout", "models.wav2lip_hd", "Wav2Lip256", 256, 256),
    Layout.HD288: LayoutInfo("an HD Wav2Lip generator, 288-pixel layout", "models.wav2lip_hd", "Wav2Lip288", 288, 288),
    Layout.SAM: LayoutInfo("an HD Wav2Lip generator, SAM layout", "models.wav2lip_hd", "Wav2LipSAM", None, 384),
}

# The tensors that tell the layouts apart (hd-layouts.md, "Recognise them by keys").
_SAM_KEY = ("sam.sa.conv1.weight", (1, 2, 7, 7))
_HD256_KEYS = (
    ("face_encoder_blocks.7.0.conv_block.0.weight", (512, 512, 4, 4)),
    ("face_decoder_blocks.1.0.conv_block.0.weight", (1024, 512, 4, 4)),
)
_HD288_KEYS = (
    ("face_encoder_blocks.1.0.conv_block.0.weight", (32, 16, 5, 5)),
    ("face_encoder_blocks.8.0.conv_block.0.weight", (512, 512, 3, 3)),
    ("face_decoder_blocks.8.0.conv_block.0.weight", (96, 64, 3, 3)),
)


def detect(shapes: dict[str, tuple[int, ...]]) -> Layout | None:
    """The generator layout whose distinguishing tensors `shapes` ({name: shape}, `module.`
    stripped) has; None when it looks like none of them (another network, or not Wav2Lip)."""

    def has(key, shape) -> bool:
        return key in shapes and tuple(shapes[key]) == shape

    if has(*_SAM_KEY):
        return Layout.SAM
    if all(has(k, s) for k, s in _HD256_KEYS):
        return Layout.HD256
    if all(has(k, s) for k, s in _HD288_KEYS):
        return Layout.HD288
    if "face_encoder_blocks.0.0.conv_block.0.weight" in shapes and "audio_encoder.0.conv_block.0.weight" in shapes:
        return Layout.W96
    return None


def face_size_for(layout: Layout, requested_px: int = 0, what: str = "--face_size") -> int:
    """The face size a `layout` network runs at: its own, or for SAM the one the user gave
    (`requested_px`, 0 for none). A size the layout cannot take is refused in one line."""
    info = LAYOUTS[layout]
    if info.face_size_px is not None:
        if requested_px and requested_px != info.face_size_px:
            raise LipsyncError(
                what,
                f"{info.face_size_px} (or nothing) for {info.description}, whose weights fix the size",
                str(requested_px),
                "leave the face size out for this checkpoint",
            )
        return info.face_size_px
    if not requested_px:
        raise LipsyncError(
            what,
            f"the face size for {info.description}: its weights do not store it",
            "none given",
            f"pass {what} {info.trained_size_px} (what the published model was trained at; any multiple of "
            f"{SAM_SIZE_STEP_PX} from {SAM_MIN_SIZE_PX} runs)",
        )
    check_sam_size(requested_px, what)
    return requested_px


def check_sam_size(size_px: int, what: str = "--face_size") -> None:
    if size_px < SAM_MIN_SIZE_PX or size_px % SAM_SIZE_STEP_PX:
        raise LipsyncError(
            what,
            f"a multiple of {SAM_SIZE_STEP_PX} from {SAM_MIN_SIZE_PX} for the SAM layout",
            str(size_px),
            f"use {LAYOUTS[Layout.SAM].trained_size_px}, the size the published model was trained at",
        )

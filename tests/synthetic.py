"""Random-weight checkpoints in the official on-disk format, for tests and benchmarks (not shipped:
benchmarks put tests/ on sys.path for this, as for servers.py and media.py).

Real weights cannot be shipped or downloaded, so tests need stand-ins that exercise the same
loading and numeric paths. Raw random weights with default BatchNorm statistics saturate the
sigmoid (a flat grey or black face, which would make parity tests trivially pass), so the
BatchNorm running statistics are calibrated on the caller's real inputs first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.checkpoint import _network


def calibrate_batchnorm(net: nn.Module, batches) -> None:
    """Set every BatchNorm's running mean/var to the cumulative average over `batches`."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for args in batches:
            net(*args)
    net.eval()


def calibration_batches(
    face_bgr: np.ndarray, box, wav16k: np.ndarray, batches: int = 4, batch: int = 8, seed: int = 0, size: int = 96
):
    """Real generator inputs for BatchNorm calibration: jittered crops (`size` pixels: the
    generator's face size) of one face plus speech mels."""
    from models.face_input import jittered_samples
    from models.mel import mel_chunks, melspectrogram

    chunks = mel_chunks(melspectrogram(wav16k), 25)
    rng = np.random.default_rng(seed)
    return [
        tuple(map(torch.from_numpy, jittered_samples(face_bgr, box, chunks, batch, rng, jitter_px=12, size=size)))
        for _ in range(batches)
    ]


def unsaturate_output(net: nn.Module, batches) -> None:
    """Rescale the final 1x1 conv per channel so that the sigmoid's input has mean 0 and std 1.5
    on `batches`: a saturated output (flat colour) would make every comparison pass."""
    final = net.output_block[1]
    pre = []
    hook = final.register_forward_hook(lambda mod, inp, out: pre.append(out))
    with torch.no_grad():
        for args in batches:
            net(*args)
    hook.remove()
    pre = torch.cat(pre)
    mean, std = pre.mean((0, 2, 3)), pre.std((0, 2, 3)) + 1e-6
    with torch.no_grad():
        k = 1.5 / std
        final.weight.mul_(k.view(-1, 1, 1, 1))
        final.bias.copy_((final.bias - mean) * k)


def make_checkpoint(
    path: str | os.PathLike,
    network: str = "Wav2Lip",
    seed: int = 0,
    calibration=(),
    prefix: str = "module.",
    bare: bool = False,
    legacy_format: bool = False,
    face_size_px: int = 0,
    unsaturate: bool = False,
) -> nn.Module:
    """Write a random-weight `network` checkpoint the way the official training script saved it.
    `network`: one of the three official networks, or an HD generator layout (`hd-256`, `hd-288`,
    `sam`; the SAM layout is built at `face_size_px`, which the saved weights do not record)."""
    torch.manual_seed(seed)
    net = _network(network, face_size_px)
    if calibration:
        calibrate_batchnorm(net, calibration)
        if unsaturate:
            unsaturate_output(net, calibration)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    state = {prefix + k: v for k, v in net.state_dict().items()}
    obj = (
        state
        if bare
        else {
            "state_dict": state,
            "optimizer": torch.optim.Adam(net.parameters(), lr=1e-4).state_dict(),
            "global_step": 1234,
            "global_epoch": 5,
        }
    )
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
    return net


EMBEDDED_FACE_BOX = (60, 230, 150, 290)  # y1 y2 x1 x2 of the face in media/avatar.jpg


def make_embedded_calibrated_checkpoint(
    path: str | os.PathLike, seed: int = 0, network: str = "Wav2Lip", face_size_px: int = 0
) -> nn.Module:
    """A random-weight generator (the original, or an HD layout: see `make_checkpoint`) calibrated
    on the project's embedded photo and speech clip at the generator's own face size."""
    from pathlib import Path

    import cv2

    from mediaio.audio import decode_audio

    media = Path(__file__).resolve().parent.parent / "media"
    from models.layouts import Layout, face_size_for

    size = 96 if network == "Wav2Lip" else face_size_for(Layout(network), face_size_px)
    # HD nets are large: fewer, smaller batches still give every BatchNorm real statistics.
    batches = calibration_batches(
        cv2.imread(str(media / "avatar.jpg")),
        EMBEDDED_FACE_BOX,
        decode_audio(media / "speech.mp3").mono_16k(),
        batches=4 if size == 96 else 2,
        batch=8 if size == 96 else 2,
        size=size,
    )
    # The original's stand-ins are as they always were; the HD ones are kept off the saturated
    # sigmoid (deeper random nets end in a black-and-white face that any comparison passes).
    return make_checkpoint(
        path, network, seed=seed, calibration=batches, face_size_px=face_size_px, unsaturate=network != "Wav2Lip"
    )


HD_LAYOUTS = {"hd-256": 0, "hd-288": 0, "sam": 192}  # layout -> face size to build at (SAM: the smallest)


@dataclass(frozen=True)
class CheckpointStyle:
    """How a stand-in checkpoint differs from the others in its family.

    Trained checkpoints differ from fresh random ones in ways that matter to export and
    quantization: BatchNorm affines far from (1, 0), activations in the tens or hundreds, and
    statistics gathered on data unlike any test input. A family spans those axes.
    """

    seed: int
    calibration: str = "photo"  # what BatchNorm statistics are gathered on: photo | smooth
    trained_affine: bool = False  # BatchNorm gamma in 0.3..2, beta in -1..1
    activation_scale: float = 1.0  # every BatchNorm affine scaled: activations this much larger

    @property
    def name(self) -> str:
        parts = [f"seed{self.seed}", self.calibration]
        if self.trained_affine:
            parts.append("affine")
        if self.activation_scale != 1.0:
            parts.append(f"x{self.activation_scale:g}")
        return "-".join(parts)


def smooth_field_batches(batches: int = 4, batch: int = 8, seed: int = 0):
    """Generator inputs that are not faces or speech: low-frequency random fields."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        faces = np.stack(
            [cv2.GaussianBlur(rng.random((96, 96, 6)).astype(np.float32), (0, 0), 6) for _ in range(batch)]
        )
        faces = (faces - faces.min()) / (faces.max() - faces.min() + 1e-6)
        mels = np.stack(
            [cv2.GaussianBlur(rng.standard_normal((80, 16)).astype(np.float32), (0, 0), 2) for _ in range(batch)]
        )
        mels = np.clip(mels * 6 - 1, -4, 4)[:, None]
        out.append(
            (
                torch.from_numpy(np.ascontiguousarray(mels)),
                torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2))),
            )
        )
    return out


def make_styled_checkpoint(path: str | os.PathLike, style: CheckpointStyle, photo_batches) -> nn.Module:
    """A random-weight generator of `style`, saved in the official format.

    `photo_batches`: real (mels, faces) batches, used when `style.calibration == "photo"`. The
    final 1x1 conv is rescaled per channel so that the sigmoid's input has mean 0 and std 1.5 on
    the calibration inputs: a saturated output (flat colour) would make every comparison pass.
    """
    from models.wav2lip import Wav2Lip

    torch.manual_seed(style.seed)
    net = Wav2Lip()
    gen = torch.Generator().manual_seed(style.seed + 1000)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                if style.trained_affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) * 1.7 + 0.3)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 2 - 1)
                m.weight.mul_(style.activation_scale)
                m.bias.mul_(style.activation_scale)
    batches = photo_batches if style.calibration == "photo" else smooth_field_batches(seed=style.seed)
    calibrate_batchnorm(net, batches)
    unsaturate_output(net, batches)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    state = {"module." + k: v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 1234, "global_epoch": 5}, path)
    return net.eval()

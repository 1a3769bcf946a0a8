"""Random-weight checkpoints in the official on-disk format, for tests and benchmarks.

Real weights cannot be shipped or downloaded, so tests need stand-ins that exercise the same
loading and numeric paths. Raw random weights with default BatchNorm statistics saturate the
sigmoid (a flat grey or black face, which would make parity tests trivially pass), so the
BatchNorm running statistics are calibrated on the caller's real inputs first.
"""

from __future__ import annotations

import os

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


def calibration_batches(face_bgr: np.ndarray, box, wav16k: np.ndarray, batches: int = 4, batch: int = 8,
                        seed: int = 0):
    """Real generator inputs for BatchNorm calibration: jittered crops of one face plus speech mels."""
    from models.mel import mel_chunks, melspectrogram
    from realtime.face_input import jittered_samples

    chunks = mel_chunks(melspectrogram(wav16k), 25)
    rng = np.random.default_rng(seed)
    return [tuple(map(torch.from_numpy, jittered_samples(face_bgr, box, chunks, batch, rng, jitter_px=12)))
            for _ in range(batches)]


def make_checkpoint(path: str | os.PathLike, network: str = "Wav2Lip", seed: int = 0,
                    calibration=(), prefix: str = "module.", bare: bool = False,
                    legacy_format: bool = False) -> nn.Module:
    """Write a random-weight `network` checkpoint the way the official training script saved it."""
    torch.manual_seed(seed)
    net = _network(network)
    if calibration:
        calibrate_batchnorm(net, calibration)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    state = {prefix + k: v for k, v in net.state_dict().items()}
    obj = state if bare else {
        "state_dict": state,
        "optimizer": torch.optim.Adam(net.parameters(), lr=1e-4).state_dict(),
        "global_step": 1234, "global_epoch": 5,
    }
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy_format)
    return net


EMBEDDED_FACE_BOX = (60, 230, 150, 290)  # y1 y2 x1 x2 of the face in media/avatar.jpg


def make_embedded_calibrated_checkpoint(path: str | os.PathLike, seed: int = 0) -> nn.Module:
    """A random-weight generator calibrated on the project's embedded photo and speech clip."""
    from pathlib import Path

    import cv2

    from models.audio import decode_audio

    media = Path(__file__).resolve().parent.parent / "media"
    batches = calibration_batches(cv2.imread(str(media / "avatar.jpg")), EMBEDDED_FACE_BOX,
                                  decode_audio(media / "speech.mp3").mono_16k())
    return make_checkpoint(path, "Wav2Lip", seed=seed, calibration=batches)

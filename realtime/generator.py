"""One generator interface over exported graphs, run by export.runtime (ONNX Runtime on CPU, CUDA
or TensorRT; OpenVINO). No torch here.

Two shapes of the same network:
  OnnxGenerator   the full graph: (mels, faces) -> faces
  SplitGenerator  face encoder once per avatar frame (`encode`), decoder per output frame
                  (`decode`); the face encoder's features are the cacheable part.
Each is warmed up once when made.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np

from export import ladder_process
from export.cache import ensure_exported
from export.metadata import SKIPS, graph_face_size
from export.precision import AvatarSamples
from export.runtime import OrtRunner, RuntimeConfig, graph_precision, make_runner
from models.hashing import sha256_file
from realtime.stage_timer import Stage, span


def _describe(run, cfg: RuntimeConfig) -> str:
    where = run.session.get_providers()[0] if isinstance(run, OrtRunner) else "GPU" if run.on_gpu else "CPU"
    return f"{cfg.runtime}:{where}:{cfg.precision}"


def _blank_inputs(face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A mel and a face of zeros, for warm-up runs."""
    return np.zeros((1, 1, 80, 16), np.float32), np.zeros((1, 6, face_size, face_size), np.float32)


class OnnxGenerator:
    """The full graph: (B,1,80,16) mels + (B,6,S,S) faces -> (B,3,S,S) in [0, 1]; S = `face_size`
    (96, or an HD layout's)."""

    def __init__(self, path: str | Path, cfg: RuntimeConfig = RuntimeConfig()):
        self._run = make_runner(path, cfg)
        self.name = _describe(self._run, cfg)
        self.face_size = graph_face_size(path)
        for _ in range(cfg.warmup_runs):
            self(*_blank_inputs(self.face_size))

    def __call__(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return self._run({"mel": mels, "face": faces})[0]


class SplitGenerator:
    """Face encoder and decoder as two sessions, so encoder features can be computed once.

    The encoder always runs in fp32: it runs once per avatar frame, its features are cached,
    and the quality gate judged each decoder on fp32 features. With `first_row` > 0 the decoder
    computes output rows `first_row`..S-1 only (see `Wav2LipFamily.decode_rows`) and `decode`
    returns those rows.
    """

    def __init__(
        self,
        encoder_path: str | Path,
        decoder_path: str | Path,
        cfg: RuntimeConfig = RuntimeConfig(),
        first_row: int = 0,
    ):
        # torch-cuda runs the decoder only: the encoder (once per avatar frame, cached) stays an
        # ONNX graph on the CPU, which every install can run.
        torch_dec = cfg.runtime == "torch-cuda"
        enc_cfg = RuntimeConfig(
            runtime="onnxruntime" if torch_dec else cfg.runtime,
            precision="fp32",
            device="cpu" if torch_dec else cfg.device,
            intra_op_threads=cfg.intra_op_threads,
            warmup_runs=0,
        )
        self._enc = make_runner(encoder_path, enc_cfg)
        self._dec = make_runner(decoder_path, cfg)
        self.first_row = first_row
        self.face_size = graph_face_size(encoder_path)
        rows = f"+rows{first_row}-{self.face_size - 1}" if first_row else ""
        self.name = _describe(self._dec, cfg) + "+split" + rows
        for _ in range(cfg.warmup_runs):
            self(*_blank_inputs(self.face_size))

    def encode(self, faces: np.ndarray) -> list:
        """(B,6,S,S) -> the skip features; kept on the device when running on a GPU."""
        if self._enc.on_gpu:
            return self._enc.run_on_device({"face": faces})
        return self._enc({"face": faces})

    def decode(self, mels: np.ndarray, features: list) -> np.ndarray:
        with span(Stage.DECODE):
            return self._dec({"mel": mels, **dict(zip(SKIPS, features))})[0]

    def __call__(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        return self.decode(mels, self.encode(faces))


def load_generator(checkpoint: str | Path, cfg: RuntimeConfig = RuntimeConfig(), split: bool = False):
    """A ready generator for a .pth: exported (and verified) on first use, from the cache after.

    torch is imported only when an export has to be made; a warm cache needs none.
    """
    if "auto" in (cfg.runtime, cfg.precision):
        raise ValueError("runtime/precision 'auto' is the live path's ladder: use load_live_generator")
    layout = "split" if split else "full"
    paths = ensure_exported(checkpoint, layout, graph_precision(cfg), face_size_px=cfg.face_size_px)
    if split:
        return SplitGenerator(paths["face_encoder"], paths["decoder"], cfg)
    return OnnxGenerator(paths["full"], cfg)


def model_face_size(checkpoint: str | Path, cfg: RuntimeConfig) -> int:
    """The face size (pixels) of `checkpoint`'s generator: 96, or an HD layout's, as its fp32 face
    encoder's export recorded it. A first use exports that encoder in a child process (torch is
    never imported here). The live path asks this first: the avatar's crops, the rows shown and the
    ladder's samples follow it."""
    return graph_face_size(ladder_process.face_encoder(checkpoint, cfg))


def live_generator_maker(
    checkpoint: str | Path, cfg: RuntimeConfig, first_row: int = 0, avatar=None, cancel=None
) -> functools.partial[SplitGenerator]:
    """The ladder's choice for the live path, as `make()` -> SplitGenerator: picklable, so a Ray
    actor or Serve replica can make the generator where it runs (from the export cache).

    Export and ladder, when needed, run in a child process (export.ladder_process): this process
    never imports torch or NNCF. `cancel` (a threading.Event) ends that child early."""
    choice = ladder_process.choose(checkpoint, cfg, first_row=first_row, avatar=avatar, cancel=cancel)
    run_cfg = dataclasses.replace(cfg, runtime=choice.runtime, precision=choice.precision, device=choice.device)
    return functools.partial(SplitGenerator, choice.encoder_path, choice.decoder_path, run_cfg, first_row=first_row)


def load_live_generator(checkpoint: str | Path, cfg: RuntimeConfig, first_row: int = 0, avatar=None):
    """The live path's generator: split graphs, decoder cropped to the rows shown, runtime and
    precision from the ladder (`export.precision.choose`) unless `cfg` pins them."""
    return live_generator_maker(checkpoint, cfg, first_row, avatar)()


def ladder_samples(path: str | Path, avatar) -> AvatarSamples:
    """The avatar's face crops for the ladder's calibration, keyed by the file and its boxes (a
    changed file or detection is a different calibration)."""
    key = hashlib.sha256(f"{sha256_file(path)}:{[list(b) for b in avatar.boxes]}".encode()).hexdigest()
    return AvatarSamples(key, avatar.crops)

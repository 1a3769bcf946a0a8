"""Offline rendering: a face image or video plus an audio file -> a lip-synced video file.

This is the reference tool's pipeline, step for step, with a pluggable generator backend.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from models import face_media
from models.audio import decode_audio
from models.errors import LipsyncError
from models.face_boxes import pad_and_clip, smooth
from models.mel import mel_chunks, melspectrogram
from realtime.compositor import paste_hard, to_uint8_faces
from realtime.face_input import crop_face, model_faces, model_mels
from realtime.sinks.file import FORMATS, VideoFileWriter

Generator = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (mels, faces) -> faces in [0, 1]


@dataclass(frozen=True)
class RenderOptions:
    fps: float = 25.0  # only for still images; a video's own rate wins
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right
    static: bool = False
    batch_size: int = 128
    resize_factor: int = 1
    crop: tuple[int, int, int, int] = (0, -1, 0, -1)
    box: tuple[int, int, int, int] = (-1, -1, -1, -1)  # y1 y2 x1 x2; -1 = detect
    rotate: bool = False
    nosmooth: bool = False
    mel_offset_frames: int = 0  # -1 = the alignment Wav2Lip was trained with
    face_model: str | None = None
    detection_cache: bool = True
    progress: bool = True


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    fps: float
    boxes: list[tuple[int, int, int, int]]


def _progress(opts: RenderOptions, **kw):
    from tqdm import tqdm

    return tqdm(disable=not opts.progress, file=sys.stderr, dynamic_ncols=True, **kw)


def load_face_frames(face_path: str, opts: RenderOptions) -> tuple[list[np.ndarray], float]:
    """The face frames and their rate; like the reference, resize/rotate/crop apply to videos only."""
    if face_media.is_image(face_path):
        return [face_media.read_image(face_path)], opts.fps
    return face_media.read_video(face_path, resize_factor=opts.resize_factor,
                                 rotate=opts.rotate, crop=opts.crop)


def face_boxes(frames: list[np.ndarray], face_path: str, opts: RenderOptions) -> list[tuple[int, int, int, int]]:
    """One (y1, y2, x1, x2) box per frame, exactly as the reference tool makes them."""
    h, w = frames[0].shape[:2]
    if opts.box[0] != -1:
        y1, y2, x1, x2 = opts.box
        if not (0 <= y1 < y2 <= h and 0 <= x1 < x2 <= w):
            raise LipsyncError("--box", f"y1 y2 x1 x2 inside the {w}x{h} frame with y1<y2 and x1<x2",
                               f"{opts.box}", "give a box inside the frame")
        return [(y1, y2, x1, x2)] * len(frames)
    from models.face_detector import detect_all

    targets = frames[:1] if opts.static else frames
    settings = {"image": face_media.is_image(face_path), "resize_factor": opts.resize_factor,
                "rotate": opts.rotate, "crop": list(opts.crop)}
    with _progress(opts, total=len(targets), desc="face boxes", unit="frame") as bar:
        def tick(items):
            for item in items:
                yield item
                bar.update(1)

        raw = detect_all(targets, face_path if opts.detection_cache else None, settings,
                         opts.face_model, progress=tick)
    missing = np.flatnonzero(raw[:, 0] < 0)
    if len(missing):
        raise LipsyncError(f"face {face_path}", "a detectable face in every frame",
                           f"no face in frame {missing[0]} ({len(missing)} of {len(raw)} frames)",
                           "use a clearer, frontal face, or give the box with --box y1 y2 x1 x2")
    boxes = np.array([pad_and_clip(b, opts.pads, h, w) for b in raw.tolist()])
    if not opts.nosmooth:
        boxes = smooth(boxes)
    return [(int(y1), int(y2), int(x1), int(x2)) for x1, y1, x2, y2 in boxes]


@dataclass(frozen=True)
class RenderInputs:
    """Everything the render needs besides the generator; made first, so bad input is reported
    before any slow model loading or export."""
    audio: object
    chunks: list
    frames: list
    fps: float
    boxes: list


def prepare(face_path: str, audio_path: str, outfile: str, opts: RenderOptions = RenderOptions()) -> RenderInputs:
    if Path(outfile).suffix.lower() not in FORMATS:
        raise LipsyncError(f"output {outfile}", "a file name ending in " + ", ".join(FORMATS),
                           f"'{Path(outfile).suffix or 'no extension'}'", "change the output file name")
    audio = decode_audio(audio_path)
    mel = melspectrogram(audio.mono_16k())
    if not np.isfinite(mel).all():
        raise LipsyncError(f"audio {audio_path}", "finite samples", "NaN or infinite values",
                           "re-export the audio")
    frames, fps = load_face_frames(face_path, opts)
    chunks = mel_chunks(mel, fps, opts.mel_offset_frames)
    frames = frames[:len(chunks)]
    return RenderInputs(audio, chunks, frames, fps, face_boxes(frames, face_path, opts))


def render(face_path: str, audio_path: str, outfile: str, generator: Generator,
           opts: RenderOptions = RenderOptions(), inputs: RenderInputs | None = None) -> RenderResult:
    inputs = inputs or prepare(face_path, audio_path, outfile, opts)
    frames, chunks, boxes, audio, fps = inputs.frames, inputs.chunks, inputs.boxes, inputs.audio, inputs.fps
    h, w = frames[0].shape[:2]
    n = len(chunks)
    with VideoFileWriter(outfile, w, h, fps, audio.pcm, audio.sample_rate_hz) as writer, \
            _progress(opts, total=n, desc="lip-sync", unit="frame") as bar:
        for start in range(0, n, opts.batch_size):
            ids = range(start, min(n, start + opts.batch_size))
            src = [0 if opts.static else i % len(frames) for i in ids]
            crops = np.stack([crop_face(frames[k], boxes[k]) for k in src])
            faces = to_uint8_faces(generator(model_mels([chunks[i] for i in ids]), model_faces(crops)))
            for face, k in zip(faces, src):
                writer.write(paste_hard(frames[k].copy(), face, boxes[k]))
            bar.update(len(src))
    return RenderResult(Path(outfile), n, fps, boxes)

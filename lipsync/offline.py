"""Offline rendering: a face image or video plus an audio file -> a lip-synced video file.

This is the reference tool's pipeline, step for step, with a pluggable generator backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mediaio import face_media
from mediaio.audio import decode_audio
from models.errors import LipsyncError
from models.face_input import crop_face, model_faces, model_mels
from models.mel import mel_chunks, melspectrogram
from realtime.compositor import paste_hard, to_uint8_faces
from realtime.framing import RenderOptions, face_boxes, progress_bar
from realtime.sinks.file import FORMATS, VideoFileWriter

Generator = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (mels, faces) -> faces in [0, 1]


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    fps: float
    boxes: list[tuple[int, int, int, int]]


def load_face_frames(face_path: str, opts: RenderOptions) -> tuple[list[np.ndarray], float]:
    """The face frames and their rate; like the reference, resize/rotate/crop apply to videos only."""
    if face_media.is_image(face_path):
        return [face_media.read_image(face_path)], opts.fps
    return face_media.read_video(face_path, resize_factor=opts.resize_factor, rotate=opts.rotate, crop=opts.crop)


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
        raise LipsyncError(
            f"output {outfile}",
            "a file name ending in " + ", ".join(FORMATS),
            f"'{Path(outfile).suffix or 'no extension'}'",
            "change the output file name",
        )
    audio = decode_audio(audio_path)
    mel = melspectrogram(audio.mono_16k())
    if not np.isfinite(mel).all():
        raise LipsyncError(f"audio {audio_path}", "finite samples", "NaN or infinite values", "re-export the audio")
    frames, fps = load_face_frames(face_path, opts)
    chunks = mel_chunks(mel, fps, opts.mel_offset_frames)
    frames = frames[: len(chunks)]
    return RenderInputs(audio, chunks, frames, fps, face_boxes(frames, face_path, opts))


def render(
    face_path: str,
    audio_path: str,
    outfile: str,
    generator: Generator,
    opts: RenderOptions = RenderOptions(),
    inputs: RenderInputs | None = None,
    face_size: int = 96,
) -> RenderResult:
    """`face_size`: the generator's (96, or an HD layout's): faces are cropped to it."""
    inputs = inputs or prepare(face_path, audio_path, outfile, opts)
    frames, chunks, boxes, audio, fps = inputs.frames, inputs.chunks, inputs.boxes, inputs.audio, inputs.fps
    h, w = frames[0].shape[:2]
    n = len(chunks)
    with (
        VideoFileWriter(outfile, w, h, fps, audio.pcm, audio.sample_rate_hz) as writer,
        progress_bar(opts, total=n, desc="lip-sync", unit="frame") as bar,
    ):
        # Activations grow with the face's area: an HD batch of 128 at 256 pixels holds ~12 GB.
        # The same pixels per batch as the reference's 96x96 batches; frames do not depend on it.
        batch = max(1, opts.batch_size * 96 * 96 // (face_size * face_size))
        for start in range(0, n, batch):
            ids = range(start, min(n, start + batch))
            src = [0 if opts.static else i % len(frames) for i in ids]
            crops = np.stack([crop_face(frames[k], boxes[k], face_size) for k in src])
            faces = to_uint8_faces(generator(model_mels([chunks[i] for i in ids]), model_faces(crops)))
            for face, k in zip(faces, src):
                writer.write(paste_hard(frames[k].copy(), face, boxes[k]))
            bar.update(len(src))
    return RenderResult(Path(outfile), n, fps, boxes)

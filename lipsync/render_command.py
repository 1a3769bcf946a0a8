"""Wav2Lip's classic command, on this engine: `python inference.py ...` and `lipsync render ...`.

    python inference.py --checkpoint_path checkpoints/wav2lip_gan.pth \
        --face media/13.jpg --audio media/1.mp3 --outfile results/ii.mp4

Takes every flag of the reference tool with the same defaults and the same results; needs no
ffmpeg executable (PyAV decodes and encodes). Extra flags are marked "(extension)".
"""

from __future__ import annotations

import argparse
import os
import sys

from lipsync.offline import RenderOptions, prepare, render
from models.errors import LipsyncError
from realtime import threads
from realtime.generator import RuntimeConfig, load_generator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Lip-sync a face image or video to an audio file with Wav2Lip.")
    p.add_argument("--checkpoint_path", required=True, help="Wav2Lip generator checkpoint (.pth)")
    p.add_argument("--face", required=True, help="image or video with a face")
    p.add_argument("--audio", required=True, help="audio file, or a video whose sound track to use")
    p.add_argument(
        "--outfile", default="results/result_voice.mp4", help=".mp4 (H.264 + AAC) or .mkv (lossless RGB + FLAC)"
    )
    p.add_argument("--static", action="store_true", help="use only the first video frame")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate for a still image")
    p.add_argument(
        "--pads",
        nargs=4,
        type=int,
        default=[0, 10, 0, 0],
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="padding around the detected face (pixels)",
    )
    p.add_argument(
        "--face_det_batch_size",
        type=int,
        default=16,
        help="accepted for compatibility; BlazeFace detects one frame at a time",
    )
    p.add_argument("--wav2lip_batch_size", type=int, default=128, help="faces per generator batch")
    p.add_argument("--resize_factor", type=int, default=1, help="divide video resolution by this")
    p.add_argument(
        "--crop",
        nargs=4,
        type=int,
        default=[0, -1, 0, -1],
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="crop video frames to this region (-1: image size)",
    )
    p.add_argument(
        "--box",
        nargs=4,
        type=int,
        default=[-1, -1, -1, -1],
        metavar=("Y1", "Y2", "X1", "X2"),
        help="fixed face box; skips detection",
    )
    p.add_argument("--rotate", action="store_true", help="rotate video frames 90 degrees clockwise")
    p.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over 5 frames")
    p.add_argument(
        "--mel_offset",
        type=int,
        default=0,
        help="(extension) video-frame offset of the mel window; -1 is the training alignment",
    )
    p.add_argument(
        "--face_model",
        default=None,
        help="(extension) BlazeFace .tflite path (default: $LIPSYNC_FACE_MODEL or the user cache)",
    )
    p.add_argument(
        "--no_detection_cache",
        action="store_true",
        help="(extension) detect faces again even if this input was seen before",
    )
    p.add_argument(
        "--backend",
        choices=["onnx", "torch"],
        default="onnx",
        help="(extension) onnx: exported and verified on first use, cached; torch: the reference",
    )
    p.add_argument(
        "--runtime",
        default="onnxruntime",
        choices=["onnxruntime", "openvino"],
        help="(extension) runtime for the exported graph",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "int8", "bf16", "fp16"],
        help="(extension) fp32 reproduces the reference; int8/bf16 are faster on CPU, fp16 on GPU",
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"], help="(extension) ONNX Runtime device"
    )
    p.add_argument(
        "--face_size",
        type=int,
        default=0,
        help="(extension) face size in pixels for an HD checkpoint of the SAM layout, whose weights do not "
        "store it (384 for the published model); other checkpoints fix their own size",
    )
    p.add_argument("--quiet", action="store_true", help="(extension) no progress bars")
    return p


def make_generator(args):
    if args.backend == "torch":
        from models.torch_generator import TorchGenerator  # torch: only for --backend torch, the reference

        return TorchGenerator(args.checkpoint_path, args.face_size)

    return load_generator(
        args.checkpoint_path,
        RuntimeConfig(
            runtime=args.runtime,
            precision=args.precision,
            device=args.device,
            intra_op_threads=threads.current().inference_threads,
            face_size_px=args.face_size,
        ),
    )


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    try:
        threads.apply(threads.plan("offline"))

        opts = RenderOptions(
            fps=args.fps,
            pads=tuple(args.pads),
            static=args.static,
            batch_size=args.wav2lip_batch_size,
            resize_factor=args.resize_factor,
            crop=tuple(args.crop),
            box=tuple(args.box),
            rotate=args.rotate,
            nosmooth=args.nosmooth,
            mel_offset_frames=args.mel_offset,
            face_model=args.face_model,
            detection_cache=not args.no_detection_cache,
            progress=not args.quiet,
        )
        if not os.path.isfile(args.checkpoint_path):
            raise LipsyncError(
                f"checkpoint {args.checkpoint_path}",
                "a .pth file",
                "no such file",
                "check the path, or put the file in checkpoints/ (see checkpoints/README.md)",
            )
        # Inputs first: bad input is reported before any slow model loading or first-use export.
        inputs = prepare(args.face, args.audio, args.outfile, opts)
        generator = make_generator(args)
        result = render(args.face, args.audio, args.outfile, generator, opts, inputs, generator.face_size)
    except LipsyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    print(f"wrote {result.path} ({result.frames} frames at {result.fps:g} fps)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`lipsync` command line: `render` (the classic pipeline) and `export` (checkpoint -> ONNX cache)."""

from __future__ import annotations

import argparse
import sys

from models.errors import LipsyncError


def _export(args) -> int:
    from export.cache import ensure_exported

    paths = ensure_exported(args.checkpoint, args.layout, args.precision)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        import inference

        return inference.main(argv[1:])
    ap = argparse.ArgumentParser(prog="lipsync", description="Real-time lip-sync on Wav2Lip.")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="offline render; takes inference.py's flags", add_help=False)
    ex = sub.add_parser("export", help="export a checkpoint to verified ONNX graphs in the cache")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--layout", choices=["full", "split"], default="full")
    ex.add_argument("--precision", default="fp32", choices=["fp32", "int8", "int8-ort", "fp16"])
    args = ap.parse_args(argv)
    try:
        return {"export": _export}[args.command](args)
    except LipsyncError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The README's main job: the embedded avatar speaks the embedded clip, live, into a file.

Runs `lipsync live` in real time (8 s) and writes results/demo.mp4 plus its latency stats. The
engine is chosen automatically: Wav2Lip when checkpoints/wav2lip_gan.pth (or wav2lip.pth) is
there, else the weight-free procedural engine; it says which. Extra arguments are passed on.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from lipsync.cli import main as cli

    out = ROOT / "results"
    rc = cli(
        [
            "live",
            "--avatar",
            str(ROOT / "media" / "avatar.jpg"),
            "--audio",
            str(ROOT / "media" / "speech.mp3"),
            "--to",
            str(out / "demo.mp4"),
            "--stats-json",
            str(out / "demo-stats.json"),
        ]
        + sys.argv[1:]
    )
    if rc == 0:
        print(f"wrote {out / 'demo.mp4'} and {out / 'demo-stats.json'}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

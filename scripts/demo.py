#!/usr/bin/env python3
"""The README's main job: lip-sync the embedded avatar to the embedded speech clip.

Uses checkpoints/wav2lip_gan.pth (or wav2lip.pth) when present. Without one, it says so and
makes a clearly named random-weight checkpoint, so the whole pipeline still runs end to end;
the mouth region is then noise, not lips.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

AVATAR = ROOT / "media" / "avatar.jpg"
SPEECH = ROOT / "media" / "speech.mp3"
AVATAR_FACE_BOX = (60, 230, 150, 290)  # only used to calibrate the random-weight stand-in


def pick_checkpoint() -> Path:
    for name in ("wav2lip_gan.pth", "wav2lip.pth"):
        if (ROOT / "checkpoints" / name).is_file():
            return ROOT / "checkpoints" / name
    stand_in = ROOT / "checkpoints" / "random-weights-demo.pth"
    print("note: no Wav2Lip checkpoint in checkpoints/ (see checkpoints/README.md); running the pipeline "
          f"with random weights from {stand_in.name}: the mouth will be noise, not speech", file=sys.stderr)
    if not stand_in.is_file():
        import cv2

        from models.audio import decode_audio
        from models.synthetic import calibration_batches, make_checkpoint

        batches = calibration_batches(cv2.imread(str(AVATAR)), AVATAR_FACE_BOX, decode_audio(SPEECH).mono_16k())
        make_checkpoint(stand_in, "Wav2Lip", seed=0, calibration=batches)
    return stand_in


def main() -> int:
    import inference

    out = ROOT / "results" / "demo.mp4"
    return inference.main(["--checkpoint_path", str(pick_checkpoint()), "--face", str(AVATAR),
                           "--audio", str(SPEECH), "--outfile", str(out)] + sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

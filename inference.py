#!/usr/bin/env python3
"""Wav2Lip's classic command, on this engine (the code is lipsync.render_command).

    python inference.py --checkpoint_path checkpoints/wav2lip_gan.pth \
        --face media/13.jpg --audio media/1.mp3 --outfile results/ii.mp4
"""

import sys

from lipsync.console import configure_logging
from lipsync.render_command import build_parser, main, make_generator

__all__ = ["build_parser", "main", "make_generator"]

if __name__ == "__main__":
    configure_logging()  # `lipsync render` has the CLI's; run on its own, the export's progress still shows
    sys.exit(main())

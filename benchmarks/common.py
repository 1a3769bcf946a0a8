"""What the benchmark scripts share: the stand-in checkpoint made in a child, the JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARDEST_STANDIN = "standin-smooth-affine-x100"


def standin_checkpoint(workdir: str | os.PathLike, style: str = HARDEST_STANDIN) -> tuple[str, str]:
    """(path, description) of a stand-in made by bench_generator's recipe in a child process, so
    that the measuring process never imports torch."""
    path = os.path.join(workdir, "standin.pth")
    code = ("import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import bench_generator as b; "
            f"b.make_standin(Path({path!r}), b.STANDINS[{style!r}])")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return path, f"random weights, official format (stand-in {style.removeprefix('standin-')}, not a test checkpoint)"


def write_json(doc: dict, path: str | os.PathLike) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))

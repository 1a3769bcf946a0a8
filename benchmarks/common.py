"""What the benchmark scripts share: the stand-in checkpoint made in a child, the JSON output."""

from __future__ import annotations

import contextlib
import json
import logging
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
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; import bench_generator as b; "
        f"b.make_standin(Path({path!r}), b.STANDINS[{style!r}])"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return path, f"random weights, official format (stand-in {style.removeprefix('standin-')}, not a test checkpoint)"


@contextlib.contextmanager
def logged_lines(logger: str):
    """The messages `logger` (and its children) logs at INFO and above meanwhile, as a list:
    the precision ladder's report, kept in a benchmark's JSON."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    target, keep = logging.getLogger(logger), Keep(logging.INFO)
    level = target.level
    target.addHandler(keep)
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        target.removeHandler(keep)
        target.setLevel(level)


def write_json(doc: dict, path: str | os.PathLike) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))

"""`lipsync plot stats.jsonl -o stats.png`: a --stats-jsonl time series drawn with matplotlib.

Four panels over run time: frame rate and frames dropped per interval; processing and
audio-to-frame latency (p50 / p95 / max); CPU and RSS; queue depths and the A/V offset at the
sinks. matplotlib is optional (the `bench` extra); without it this is a one-line error.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from models.errors import LipsyncError

_FORMATS = (".png", ".svg", ".pdf")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise LipsyncError(
            "lipsync plot",
            "a --stats-jsonl file",
            f"no file at {p}",
            "give the path `lipsync live --stats-jsonl` wrote",
        )
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise LipsyncError(
                "lipsync plot",
                "one JSON object per line",
                f"line {n} of {p} is not JSON",
                "give a file written by `lipsync live --stats-jsonl`",
            ) from None
        if not isinstance(row, dict) or "t_s" not in row:
            raise LipsyncError(
                "lipsync plot",
                "stats lines with a t_s field",
                f"line {n} of {p} has none",
                "give a file written by `lipsync live --stats-jsonl`",
            )
        rows.append(row)
    if not rows:
        raise LipsyncError(
            "lipsync plot",
            "at least one stats line",
            f"an empty file {p}",
            "let the live run last one --stats-interval or more",
        )
    return rows


def _series(rows, *keys):
    out = []
    for r in rows:
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        out.append(float("nan") if v is None else v)
    return out


def plot_stats(jsonl: str | os.PathLike, output: str | os.PathLike) -> Path:
    out = Path(output)
    if out.suffix.lower() not in _FORMATS:
        raise LipsyncError(
            "lipsync plot -o",
            f"an image path ending in {', '.join(_FORMATS)}",
            f"'{out.name}'",
            "name the output e.g. stats.png",
        )
    rows = read_jsonl(jsonl)
    try:
        import matplotlib  # matplotlib: an optional extra (bench), only for lipsync plot
    except ImportError:
        raise LipsyncError(
            "lipsync plot",
            "matplotlib",
            "it is not installed",
            "pip install 'lipsync-rt[bench]' (or pip install matplotlib)",
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    title = f"{Path(jsonl).name}: {len(rows)} intervals"
    # The last line is the partial interval at the end (the flush of a stopping engine): much
    # shorter than the others, its rates would plot as a spike. It stays in the file, so that the
    # lines add up to the whole run, but is not drawn.
    if len(rows) > 2:
        typical = sorted(r.get("interval_s", 0) for r in rows)[len(rows) // 2]
        if rows[-1].get("interval_s", typical) < typical / 2:
            title += f" (the last, {rows[-1]['interval_s']:.1f} s long, not drawn)"
            rows = rows[:-1]
    minutes = rows[-1]["t_s"] > 120
    t = [r["t_s"] / (60 if minutes else 1) for r in rows]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True, constrained_layout=True)
    ax = axes[0]
    ax.plot(t, _series(rows, "fps"), label="fps", color="tab:blue", marker=".")
    ax.set_ylabel("frames / s")
    ax2 = ax.twinx()
    dropped = _series(rows, "dropped")
    ax2.bar(t, dropped, width=0.6 * (t[1] - t[0]) if len(t) > 1 else 0.1, color="tab:red", alpha=0.5, label="dropped")
    ax2.set_ylim(0, max([1] + [d for d in dropped if d == d]) * 1.1)
    ax2.set_ylabel("dropped per interval")
    _legend(ax, ax2)
    ax.set_title(title)

    ax = axes[1]
    for key, colour in (("processing_ms", "tab:blue"), ("audio_to_frame_ms", "tab:orange")):
        name = key.removesuffix("_ms").replace("_", "-")
        ax.plot(t, _series(rows, key, "p50"), color=colour, ls=":", label=f"{name} p50")
        ax.plot(t, _series(rows, key, "p95"), color=colour, label=f"{name} p95")
        ax.plot(t, _series(rows, key, "max"), color=colour, ls="--", alpha=0.6, label=f"{name} max")
    ax.set_ylabel("latency (ms)")
    ax.legend(loc="upper left", fontsize="small", ncol=2)

    ax = axes[2]
    ax.plot(t, _series(rows, "cpu_percent"), color="tab:green", label="CPU (% of all cores)")
    ax.set_ylabel("CPU %")
    ax2 = ax.twinx()
    ax2.plot(t, _series(rows, "rss_mb"), color="tab:purple", label="RSS (MB)")
    ax2.set_ylabel("RSS (MB)")
    _legend(ax, ax2)

    ax = axes[3]
    queues = sorted({q for r in rows for q in (r.get("queues") or {})})
    for q in queues:
        ax.plot(t, _series(rows, "queues", q), label=f"queue {q}")
    ax.set_ylabel("queued (items)")
    ax2 = ax.twinx()
    ax2.plot(t, _series(rows, "av_offset_ms"), color="black", ls="--", label="A/V offset at sinks (ms)")
    ax2.set_ylabel("A/V offset (ms)")
    _legend(ax, ax2)
    axes[-1].set_xlabel(f"run time ({'min' if minutes else 's'})")

    # Written beside the target and renamed: a failed draw leaves no half-written image.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=100)
            os.replace(tmp, out)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        raise LipsyncError(
            "lipsync plot -o",
            "a writable image path",
            f"{e.strerror} ({out})",
            "give a path in a folder you can write to",
        ) from None
    finally:
        plt.close(fig)
    return out


def _legend(ax, ax2) -> None:
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize="small")

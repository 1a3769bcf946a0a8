"""Bounded stats: histogram accuracy against numpy, memory that does not grow with run length,
per-interval figures, and --stats-jsonl / `lipsync plot` from a real live run."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import ROOT
from realtime.histogram import LogHistogram
from realtime.stats import Stats

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)


def _data(kind, n, rng):
    if kind == "lognormal":  # latency-like: long right tail
        return rng.lognormal(3.0, 0.8, n)
    if kind == "uniform":
        return rng.uniform(0.2, 120.0, n)
    if kind == "bimodal":  # a fast path and a slow one (a stall now and then)
        return np.where(rng.random(n) < 0.97, rng.normal(20, 2, n).clip(1), rng.normal(400, 50, n).clip(1))
    return rng.exponential(5.0, n) + 0.01


@pytest.mark.parametrize("kind", ["lognormal", "uniform", "bimodal", "exponential"])
@pytest.mark.parametrize("n", [1, 2, 17, 1000, 100_000])
@pytest.mark.parametrize("relative_error", [0.01, 0.05])
def test_percentiles_within_stated_relative_error_of_numpy(kind, n, relative_error):
    rng = np.random.default_rng(hash((kind, n)) % 2**32)
    values = _data(kind, n, rng)
    h = LogHistogram(relative_error=relative_error)
    for v in values:
        h.add(v)
    got = np.array(h.quantiles(QS))
    want = np.percentile(values, [100 * q for q in QS])
    assert np.all(np.abs(got - want) <= relative_error * np.abs(want) + 1e-12), (got, want)
    assert h.count == n and h.min == values.min() and h.max == values.max()
    assert h.total == pytest.approx(values.sum())


def test_error_is_not_trivially_zero():
    """Buckets do lose information: the answer differs from the exact one, within the bound."""
    values = np.random.default_rng(0).uniform(1, 100, 10_001)
    h = LogHistogram(relative_error=0.05)
    for v in values:
        h.add(v)
    got, want = h.quantile(0.5), float(np.median(values))
    assert got != want and abs(got - want) <= 0.05 * want


def test_out_of_range_values_are_clamped_to_the_exact_extremes():
    h = LogHistogram(min_value=1.0, max_value=100.0)
    for v in (-3.0, 0.0, 0.5, 50.0, 1e5):
        h.add(v)
    assert h.quantile(0.0) == -3.0 and h.quantile(1.0) == 1e5
    assert LogHistogram().quantiles((0.5, 0.95)) == [None, None]


def test_merge_equals_one_histogram_of_everything():
    rng = np.random.default_rng(1)
    a, b, both = LogHistogram(), LogHistogram(), LogHistogram()
    for v in rng.lognormal(2, 1, 5000):
        a.add(v)
        both.add(v)
    for v in rng.lognormal(4, 0.5, 3000):
        b.add(v)
        both.add(v)
    a.merge(b)
    assert np.array_equal(a.counts, both.counts) and a.quantiles(QS) == both.quantiles(QS)


def _feed(stats, n, t0_ns=0, frame_ns=40_000_000, processing_ms=20.0, kind="generated"):
    for i in range(n):
        t = t0_ns + i * frame_ns
        stats.record(t, t - int(processing_ms * 1e6), t - int((processing_ms + 100) * 1e6), kind)
    return t0_ns + n * frame_ns


def test_memory_does_not_grow_with_a_million_frames():
    stats = Stats()
    _feed(stats, 1500)  # a minute at 25 fps
    size_minute = stats.nbytes
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        t = _feed(stats, 50_000, t0_ns=1500 * 40_000_000)
        grown = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    # 50,000 frames kept as samples would be 3 lists x 50,000 floats (~4.8 MB).
    assert grown < 64_000, grown
    rng = np.random.default_rng(2)
    for i, ms in enumerate(rng.lognormal(3, 0.5, 950_000)):  # to 1,001,500 frames, latencies varying
        stats.record(t + i * 40_000_000, t + i * 40_000_000 - int(ms * 1e6), None, "idle")
    assert stats.frames == 1_001_500
    assert stats.nbytes == size_minute
    s = stats.summary()
    assert s["processing_latency_ms"]["p50"] == pytest.approx(np.exp(3), rel=0.05)


def test_summary_keeps_its_keys_and_figures():
    stats = Stats()
    _feed(stats, 100, processing_ms=20.0)
    stats.record(100 * 40_000_000, None, None, "dropped")
    s = stats.summary()
    assert set(s) >= {
        "fps_sustained",
        "frames",
        "generated",
        "idle",
        "dropped",
        "no_face",
        "audio_overruns",
        "processing_latency_ms",
        "audio_to_frame_ms",
        "interframe_gap_ms",
        "cpu_percent",
        "rss_mb",
    }
    assert set(s["processing_latency_ms"]) == {"p50", "p95", "p99"}
    assert set(s["interframe_gap_ms"]) == {"p50", "p99", "max"}
    assert s["frames"] == 101 and s["generated"] == 100 and s["dropped"] == 1
    assert s["fps_sustained"] == pytest.approx(25.0)
    assert s["processing_latency_ms"]["p95"] == pytest.approx(20.0, rel=0.01)
    assert s["audio_to_frame_ms"]["p50"] == pytest.approx(120.0, rel=0.01)
    assert s["interframe_gap_ms"]["max"] == pytest.approx(40.0)
    assert "latency p50  20." in stats.status_line() or "latency p50  19." in stats.status_line()


def test_intervals_hold_only_their_own_frames():
    stats = Stats()
    stats.audio_overruns = 2  # before the first interval: not counted in it
    stats.take_interval()
    t = _feed(stats, 50, processing_ms=10.0)
    stats.audio_overruns += 3
    first = stats.take_interval()
    _feed(stats, 30, t0_ns=t, processing_ms=50.0, kind="idle")
    stats.record(t + 31 * 40_000_000, None, None, "dropped")
    second = stats.take_interval()
    assert first["frames"] == 50 and first["generated"] == 50 and first["dropped"] == 0
    assert first["audio_overruns"] == 3 and second["audio_overruns"] == 0
    assert first["processing_ms"]["p95"] == pytest.approx(10.0, rel=0.01)
    assert second["frames"] == 31 and second["idle"] == 30 and second["generated"] == 0 and second["dropped"] == 1
    assert second["processing_ms"]["p50"] == pytest.approx(50.0, rel=0.01)
    assert second["processing_ms"]["max"] == pytest.approx(50.0)
    assert set(first) >= {
        "t_s",
        "interval_s",
        "fps",
        "audio_to_frame_ms",
        "interframe_gap_ms",
        "cpu_percent",
        "rss_mb",
        "threads",
    }
    whole = stats.summary()  # the run as a whole still has both
    assert whole["frames"] == 81 and whole["processing_latency_ms"]["p50"] == pytest.approx(10.0, rel=0.01)
    assert stats.take_interval()["frames"] == 0


# -- a real live run --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_jsonl(tmp_path_factory, photo, speech_wav):
    d = tmp_path_factory.mktemp("stats-jsonl")
    jsonl, summary = d / "stats.jsonl", d / "stats.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            str(speech_wav),
            "--loop",
            "--to",
            "null",
            "--engine",
            "procedural",
            "--duration",
            "4.5",
            "--stats-jsonl",
            str(jsonl),
            "--stats-interval",
            "1",
            "--stats-json",
            str(summary),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in jsonl.read_text().splitlines()], json.loads(summary.read_text())


def test_live_run_writes_interval_lines_with_plausible_values(live_jsonl):
    rows, summary = live_jsonl
    assert len(rows) >= 4
    for r in rows:
        assert set(r) >= {
            "time_unix_s",
            "t_s",
            "interval_s",
            "fps",
            "frames",
            "generated",
            "idle",
            "dropped",
            "processing_ms",
            "audio_to_frame_ms",
            "cpu_percent",
            "rss_mb",
            "queues",
            "av_offset_ms",
            "sinks",
        }
        assert set(r["processing_ms"]) == {"p50", "p95", "max"}
        assert set(r["queues"]) == {"audio_in", "frames_out", "audio_out"}
        assert 30 < r["rss_mb"] < 4000 and 0 <= r["cpu_percent"] <= 100
    full = [r for r in rows[:-1]]  # every line but the last covers a whole second
    for r in full:
        assert r["interval_s"] == pytest.approx(1.0, abs=0.2)
        assert 15 <= r["fps"] <= 35, r
        # Per-stage costs: the worker's stages are parts of the worker thread's CPU.
        st = r["stages"]
        assert st["frames"] == r["frames"] and {"schedule", "mel"} <= set(st["stages"])
        worker = st["thread_cpu_ms_per_frame"]["lipsync-worker"]
        assert 0 < sum(s["cpu_ms_per_frame"] for s in st["stages"].values()) <= worker + 0.01
        assert st["queue_wait_ms_mean"]["frames_out"] >= 0
        assert r["processing_ms"]["p50"] is not None and 0 < r["processing_ms"]["p50"] <= r["processing_ms"]["max"]
        # Sound runs ahead of the pictures at the sinks: a frame waits for its mel window to end.
        assert 40 <= r["av_offset_ms"] <= 1000, r
        assert r["sinks"]["null"]["delivered"] > 0
    assert [r["t_s"] for r in rows] == sorted(r["t_s"] for r in rows)
    assert sum(r["frames"] for r in rows) == summary["frames"]
    assert summary["stages"]["stages"]["mel"]["calls"] == sum(r["stages"]["stages"]["mel"]["calls"] for r in rows)
    assert sum(r["dropped"] for r in rows) == summary["dropped"]


def test_plot_draws_a_png(live_jsonl, tmp_path):
    rows, _ = live_jsonl
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "plots" / "stats.png"
    r = subprocess.run(
        [sys.executable, "-m", "lipsync.cli", "plot", str(jsonl), "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] >= 800 and im.size[1] >= 800
        # Not blank: the lines put many colours on the page.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 50
    assert sorted(p.name for p in out.parent.iterdir()) == ["stats.png"]


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lipsync.cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_plot_bad_input_is_one_line_error(tmp_path):
    _one_line_error(_cli("plot", tmp_path / "none.jsonl", "-o", tmp_path / "a.png"), "no file at")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"t_s": 1}\nnot json\n')
    _one_line_error(_cli("plot", bad, "-o", tmp_path / "a.png"), "line 2")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line_error(_cli("plot", empty, "-o", tmp_path / "a.png"), "empty")
    _one_line_error(_cli("plot", bad, "-o", tmp_path / "a.txt"), "stats.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty.jsonl"]


def test_plot_without_matplotlib_is_one_line_error(tmp_path):
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"t_s": 10, "fps": 25}\n')
    # A real import failure: matplotlib is made unimportable in the child process.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from lipsync.cli import main; "
        f"sys.exit(main(['plot', {str(jsonl)!r}, '-o', {str(tmp_path / 'x.png')!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    _one_line_error(r, "matplotlib", "pip install")
    assert not (tmp_path / "x.png").exists()


def test_unwritable_stats_jsonl_fails_before_the_session(tmp_path, photo, speech_wav):
    r = _cli(
        "live",
        "--avatar",
        photo,
        "--audio",
        speech_wav,
        "--to",
        "null",
        "--engine",
        "procedural",
        "--stats-jsonl",
        tmp_path / "no" / "such" / "dir" / "s.jsonl",
    )
    _one_line_error(r, "--stats-jsonl", "No such file")


def test_session_that_fails_to_start_leaves_no_jsonl(tmp_path, speech_wav):
    jsonl = tmp_path / "s.jsonl"
    r = _cli(
        "live",
        "--avatar",
        tmp_path / "missing.jpg",
        "--audio",
        speech_wav,
        "--to",
        "null",
        "--engine",
        "procedural",
        "--stats-jsonl",
        jsonl,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not jsonl.exists()


def test_playout_mode_writes_interval_lines(tmp_path, photo, speech_wav):
    jsonl = tmp_path / "p.jsonl"
    r = _cli(
        "live",
        "--avatar",
        photo,
        "--audio",
        speech_wav,
        "--audio-pacing",
        "burst",
        "--to",
        "null",
        "--engine",
        "procedural",
        "--duration",
        "3",
        "--stats-jsonl",
        jsonl,
        "--stats-interval",
        "1",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(rows) >= 3
    for row in rows[:-1]:
        assert set(row["queues"]) == {"pending_audio_s", "playout_ahead"}
        assert row["av_offset_ms"] == 0.0  # each frame leaves with exactly its own audio
        assert 15 <= row["fps"] <= 35 and row["generated"] + row["idle"] + row.get("crossfade", 0) > 0


def test_a_failing_disk_ends_the_log_not_the_session(caplog):
    """/dev/full: every write fails with ENOSPC, as a full disk would."""
    from realtime.stats_log import StatsLog, StatsLogConfig

    stats = Stats()
    log = StatsLog("/dev/full", StatsLogConfig(interval_s=3600))
    log.start(stats, lambda: {"queues": {}})
    _feed(stats, 10)
    with caplog.at_level("WARNING", logger="realtime.stats_log"):
        log.close()
    assert log.lines == 0 and "No space left" in caplog.text

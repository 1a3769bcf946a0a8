"""Playout for pushed speech: the output clock, pairing, interruption, back-pressure, per-sink
delivery, timestamped files, and the CLI's burst pacing.

Most tests run the real Playout (procedural lips: fast, deterministic) on a ManualClock: the test
moves time one frame at a time and reads what the pacer emitted for that tick, so every check is
about what was emitted, never about how long something took.
"""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT

FPS = 25
TICK_NS = 40_000_000
SPF_OUT = 48_000 // FPS


@pytest.fixture(scope="module")
def speech10(speech_wav):
    """Exactly 10 s of speech at 16 kHz (the espeak clip, repeated)."""
    from mediaio.audio import decode_audio

    pcm = decode_audio(speech_wav).mono_16k()
    return np.tile(pcm, int(np.ceil(160_000 / len(pcm))))[:160_000].astype(np.float32)


class Ticker:
    """Drives a playout on a ManualClock: one `step()` = one output frame, the one that tick made.

    The pacer emits its first frame (pts 0) as it starts, before the clock moves; it is read here
    (`first`). Each step then waits for the frame of the tick it caused, so the pacer has finished
    that tick before the test acts again. (Reading one frame behind, as this did, let a test's
    interrupt() race the pacer's next tick: under load the pacer sometimes won, and a speech frame
    made before the interrupt came out after it.)"""

    def __init__(self, pl, clock):
        self.pl, self.clock = pl, clock
        self.events = []
        pl.on_event(lambda kind, payload: self.events.append((kind, payload)))
        self._it = pl.frames(timeout_s=20)
        self.ends = []
        self.first = self._next()
        assert self.first.video.pts == 0

    def step(self):
        pts = self.clock.now_ns() // TICK_NS + 1  # the tick this step makes due
        self.clock.advance_ns(TICK_NS)
        item = self._next()
        assert item.video.pts == pts, (item.video.pts, pts)
        return item

    def _next(self):
        from realtime.playout import PlayoutItem, SegmentEnd

        while True:
            item = next(self._it)
            if isinstance(item, SegmentEnd):
                self.ends.append(item)
                continue
            assert isinstance(item, PlayoutItem)
            return item


def make_playout(photo, sinks=(), renderer=None, pacing=None, **pcfg):
    # Time only moves when the test says so; a tick waits for its speech frame as long as it
    # takes (a real clock would hold the previous frame after late_frame_wait_ms).
    pcfg.setdefault("late_frame_wait_ms", 20_000)
    from realtime.clock import ManualClock
    from realtime.live import build_playout
    from realtime.playout import Pacing, Playout, PlayoutConfig

    clock = ManualClock()
    base = build_playout(
        str(photo),
        list(sinks),
        engine="procedural",
        clock=clock,
        pcfg=PlayoutConfig(**pcfg),
        pacing=pacing or Pacing.PLAYOUT,
    )
    if renderer is not None:
        base = Playout(base.avatar, renderer, list(sinks), base.cfg, base.pcfg, clock)
    return base.start(), clock


def push_all(pl, pcm, rate=16_000, piece_s=0.1, ready=True):
    step = int(rate * piece_s)
    for off in range(0, len(pcm), step):
        pl.push_audio(pcm[off : off + step], rate, timeout_s=10)
    pl.end_segment()
    if ready:  # the next tick starts the utterance
        assert pl.wait_ready(timeout_s=20)


def test_every_pushed_sample_plays_once_paired_with_its_frame(photo, speech10):
    import soxr

    pl, clock = make_playout(photo)
    t = Ticker(pl, clock)
    try:
        push_all(pl, speech10)
        items = [t.first]
        while not t.ends:
            items.append(t.step())
            assert len(items) < 400, "the utterance never finished"
        for _ in range(6):
            items.append(t.step())
    finally:
        summary = pl.stop()
    assert [k for k, _ in t.events] == ["playback_started", "playback_finished"]
    end = t.ends[0]
    assert end.position_s == 10.0 and not end.interrupted

    kinds = [i.video.meta["kind"] for i in items]
    first = next(n for n, i in enumerate(items) if i.video.meta["kind"] == "generated")
    speech = items[first : first + 250]
    # Contiguous: the utterance's 250 frames are one run; nothing held, nothing late, nothing dropped.
    assert all(k in ("generated", "idle") for k in kinds[first : first + 250])
    assert "held" not in kinds and summary["dropped"] == 0 and summary.get("late", 0) == 0
    assert sum(k == "generated" for k in kinds) >= 200
    # One output clock: pts 0, 1, 2, ... and each frame's audio starts at its own time.
    assert [i.video.pts for i in items] == list(range(len(items)))
    assert all(i.audio.pts == i.video.pts * SPF_OUT and i.audio.samples == SPF_OUT for i in items)
    # The sound that plays is the pushed sound, at 48 kHz, each piece beside the frame made from it.
    heard = np.concatenate([i.audio.pcm for i in speech])
    want = soxr.resample(speech10, 16_000, 48_000, quality="HQ").astype(np.float32)
    assert len(heard) == len(want) == 480_000
    assert np.corrcoef(heard, want)[0, 1] > 0.999 and np.abs(heard - want).max() < 0.02
    # Before the utterance and after its crossfade: the idle avatar with silence.
    idle = pl.avatar.frames[0]
    for i in items[:first] + items[-2:]:
        assert not i.audio.pcm.any()
        assert np.array_equal(i.video.bgr, idle)


def test_interrupt_silences_at_the_next_tick_and_fades_to_idle(photo, speech10):
    pl, clock = make_playout(photo)
    t = Ticker(pl, clock)
    started = threading.Event()
    pl.on_event(lambda kind, seg: started.set() if kind == "playback_started" else None)
    try:
        push_all(pl, speech10)
        # Step until the utterance's playback_started event, then 24 more of its frames: the cut
        # comes after exactly 25 frames of it, whatever the machine's load.
        for _ in range(50):
            item = t.step()
            if started.is_set():
                break
        assert started.is_set() and item.video.meta["segment"] is not None
        for _ in range(24):
            assert t.step().video.meta["segment"] is not None
        pl.interrupt()
        after = [t.step() for _ in range(6)]
        # A new utterance after the interrupt plays from its own beginning.
        push_all(pl, speech10[:16_000])
        later = [t.step() for _ in range(40)]
    finally:
        pl.stop()
    cut = [e for e in t.ends if e.interrupted]
    assert len(cut) == 1 and cut[0].position_s == 1.0
    assert all(not i.audio.pcm.any() for i in after)  # no speech audio after the interrupt
    assert after[0].video.meta["kind"] == "crossfade"
    assert np.array_equal(after[3].video.bgr, pl.avatar.frames[0])  # back to idle: 120 ms of fade
    again = [i for i in later if i.audio.pcm.any()]
    assert again, "the next utterance never played"
    import soxr

    want = soxr.resample(speech10[:16_000], 16_000, 48_000, quality="HQ").astype(np.float32)
    got = np.concatenate([i.audio.pcm for i in again])[: len(want) // 2]
    assert np.corrcoef(got, want[: len(got)])[0, 1] > 0.99


def test_a_consumer_that_owns_the_clock_gets_frames_made_as_it_pulls_and_nothing_after_an_interrupt(photo, speech10):
    from realtime.playout import Pacing, PlayoutItem, SegmentEnd

    pl, clock = make_playout(photo, pacing=Pacing.CONSUMER)
    try:
        push_all(pl, speech10)
        # Nobody pulls yet: the generator made the lookahead (400 ms) and waits; the rest of the
        # 10 s waits as pushed audio (back-pressure on the producer, not frames piling up).
        assert pl.wait_ready(timeout_s=20)
        g = pl.gauges()["queues"]
        assert g["playout_ahead"] <= 10 and g["pending_audio_s"] > 8
        it = pl.frames()
        items = [next(it) for _ in range(30)]  # as fast as the consumer likes: no clock here
        assert all(isinstance(i, PlayoutItem) for i in items)
        assert [i.video.pts for i in items] == list(range(30))
        assert sum(i.audio.pcm.any() for i in items) >= 25
        pl.interrupt()
        after = [next(it) for _ in range(8)]
    finally:
        pl.stop()
    # First the cut (in order, never dropped), then no speech at all: nothing made before the
    # interrupt reaches the consumer.
    assert isinstance(after[0], SegmentEnd) and after[0].interrupted and after[0].position_s == 1.2
    frames = [i for i in after if isinstance(i, PlayoutItem)]
    assert len(frames) == 7 and not any(i.audio.pcm.any() for i in frames)
    assert all(i.video.meta["segment"] is None for i in frames)
    assert frames[0].video.meta["kind"] == "crossfade" and frames[-1].video.meta["kind"] == "idle"


def test_a_long_push_then_a_pause_stays_one_utterance_until_the_idle_end(photo, speech10):
    """A TTS that pushes 2 s at once, stalls 1.5 s, then goes on: one utterance. Nobody calls
    end_segment: the utterance ends segment_idle_end_ms (3 s) after its audio was taken in."""
    # During the stall each tick waits this long (real time) for a frame that cannot come.
    pl, clock = make_playout(photo, late_frame_wait_ms=20)
    t = Ticker(pl, clock)
    try:
        pl.push_audio(speech10[:32_000], 16_000)  # 2 s in one push
        assert pl.wait_ready(timeout_s=20)
        steps = [t.step() for _ in range(50 + 38)]  # its 2 s, then 1.5 s of stall
        assert not t.ends
        pl.push_audio(speech10[32_000:40_000], 16_000)  # the rest of the reply: 0.5 s
        n = 0
        while not t.ends:
            steps.append(t.step())
            n += 1
            assert n < 400, "the utterance never ended"
    finally:
        pl.stop()
    assert len(t.ends) == 1 and not t.ends[0].interrupted
    assert n >= 3 * 25  # not before 3 s without audio
    assert [k for k, _ in t.events] == ["playback_started", "playback_finished"]


def test_pushes_past_the_pending_bound_wait_then_are_refused_with_the_reason(photo):
    from realtime.playout import PlayoutFull

    pl, clock = make_playout(photo, max_pending_s=2.0)
    try:
        tone = (0.3 * np.sin(np.arange(24_000) * 0.07)).astype(np.float32)  # 1.5 s
        pl.push_audio(tone, 16_000)
        # The generator takes the first push and blocks on its lookahead (the clock is still),
        # so the second push waits for room and then fits; the third cannot.
        pl.push_audio(tone, 16_000, timeout_s=10)
        with pytest.raises(PlayoutFull) as e:
            pl.push_audio(tone, 16_000, timeout_s=0)
        msg = str(e.value)
        assert "\n" not in msg and "max_pending_s" in msg and "1.50 s" in msg
        pl.interrupt()  # drops what is pending: room again at once
        assert pl.push_audio(tone, 16_000, timeout_s=0)
    finally:
        pl.stop()


def test_push_audio_takes_int16_and_stereo_and_rejects_the_rest_at_the_call(photo):
    from realtime.audio_input import AudioFormatError, to_mono_float32

    rng = np.random.default_rng(0)
    left = (rng.standard_normal(800) * 3000).astype(np.int16)
    stereo = np.stack([left, left], axis=1)
    np.testing.assert_allclose(to_mono_float32(stereo, 48_000), left / 32768, atol=1e-6)
    assert to_mono_float32(left.astype(np.float64) / 32768, 16_000).dtype == np.float32
    bad = [
        (left.astype(np.int32), 16_000, "dtype int32"),
        (np.zeros((2, 3, 4), np.float32), 16_000, "shape"),
        (left, 0, "sample_rate_hz"),
        (left, 16_000.0, "sample_rate_hz"),
        (np.full(10, np.nan, np.float32), 16_000, "NaN"),
    ]
    pl, _ = make_playout(photo)
    try:
        for pcm, rate, what in bad:
            with pytest.raises(AudioFormatError, match=what):
                pl.push_audio(pcm, rate)
        assert pl.error is None  # the worker never saw them
        assert pl.push_audio(stereo, 48_000)
    finally:
        pl.stop()


class BlockedSink:
    name = "blocked"

    def __init__(self):
        self.release = threading.Event()
        self.pts = []

    def send_video(self, frame):
        self.release.wait()
        self.pts.append(frame.pts)

    def send_audio(self, chunk):
        pass

    def close(self):
        pass


class WatchedSink:
    """Keeps what it gets and lets the test wait until a frame has arrived (the clock here runs
    as fast as the test steps it, so the test must not outrun a healthy sink either)."""

    name = "watched"

    def __init__(self):
        self.frames = []
        self._cv = threading.Condition()

    def send_video(self, frame):
        with self._cv:
            self.frames.append(frame)
            self._cv.notify_all()

    def send_audio(self, chunk):
        pass

    def wait_for(self, n, timeout_s=10):
        with self._cv:
            return self._cv.wait_for(lambda: len(self.frames) >= n, timeout_s)

    def close(self):
        pass


def test_a_blocked_sink_does_not_hold_up_the_others(photo, speech10):
    blocked, fine = BlockedSink(), WatchedSink()
    pl, clock = make_playout(photo, sinks=[blocked, fine])
    t = Ticker(pl, clock)
    try:
        push_all(pl, speech10[:32_000])
        for n in range(60):
            t.step()
            assert fine.wait_for(n + 1), "the healthy sink stalled behind the blocked one"
    finally:
        blocked.release.set()
        summary = pl.stop()
    # 60 steps: ticks 0..60 were emitted (each step read its own) and stop() delivers what is queued.
    n = len(fine.frames)
    assert n == 61 and [f.pts for f in fine.frames] == list(range(n))
    assert len(blocked.pts) < 60 and summary["sink_frames_dropped"]["blocked"] > 0
    assert blocked.pts == sorted(blocked.pts) and blocked.pts[-1] == n - 1  # the newest, in order


def test_a_reader_that_falls_behind_loses_old_frames_but_never_a_segment_end(photo, speech10):
    """Pacing.PLAYOUT: the pacer keeps its clock for the sinks while a frames() reader does not
    read; the reader's frames are kept for output_queue_ms (oldest dropped), its events all."""
    from realtime.playout import PlayoutItem, SegmentEnd

    sink = WatchedSink()
    pl, clock = make_playout(photo, sinks=[sink])
    try:
        assert sink.wait_for(1)  # the first tick, at start
        push_all(pl, speech10[:16_000])  # 1 s
        for n in range(2, 80):  # 3 s of ticks, nothing read
            clock.advance_ns(TICK_NS)
            assert sink.wait_for(n)
        it = pl.frames(timeout_s=0)
        first = next(it)
        rest = list(it)
    finally:
        pl.stop()
    assert isinstance(first, SegmentEnd) and not first.interrupted and first.position_s == 1.0
    assert all(isinstance(i, PlayoutItem) for i in rest) and len(rest) == 25  # output_queue_ms: 1 s
    assert [i.video.pts for i in rest] == list(range(54, 79))


def test_a_failing_renderer_stops_the_playout_and_the_caller_hears_why(photo, speech10):
    class Broken:
        name = "broken"

        def render(self, *a):
            raise MemoryError("out of memory in the decoder")

    pl, clock = make_playout(photo, renderer=Broken())
    t = Ticker(pl, clock)
    with pytest.raises(RuntimeError, match="out of memory"):
        push_all(pl, speech10)
        assert pl.wait_idle(timeout_s=10)  # returns as soon as the error is there
        pl.push_audio(speech10[:1600], 16_000)
    with pytest.raises(RuntimeError, match="MemoryError"):
        pl.stop()
    assert t.ends == []


def test_file_sink_writes_by_timestamp_so_losses_leave_gaps_not_shifts(tmp_path):
    import av

    from realtime.frames import AudioChunk, VideoFrame
    from realtime.sinks.recorder import FileSink

    sink = FileSink(str(tmp_path / "gaps.mkv"), FPS, 48_000)
    img = np.zeros((64, 64, 3), np.uint8)
    for p in (0, 1, 2, 5, 6, 9):  # frames 3-4 and 7-8 lost upstream
        sink.send_audio(AudioChunk(np.full(SPF_OUT, 0.25, np.float32), 48_000, p * SPF_OUT, 0))
        img = img.copy()
        img[:] = p * 20
        sink.send_video(VideoFrame(img, p))
    sink.close()
    with av.open(str(tmp_path / "gaps.mkv")) as c:
        frames = [(f.pts * f.time_base, int(f.to_ndarray(format="bgr24")[0, 0, 0])) for f in c.decode(video=0)]
    with av.open(str(tmp_path / "gaps.mkv")) as c:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert [(float(t) * FPS, v) for t, v in frames] == [(p, p * 20) for p in (0, 1, 2, 5, 6, 9)]
    # 10 frames of time: the lost chunks are silence in their place, the rest unmoved.
    assert len(audio) == 10 * SPF_OUT
    per_frame = np.abs(audio.astype(np.float32)).reshape(10, SPF_OUT).mean(axis=1)
    assert [bool(v > 0.1 * np.abs(audio).max()) for v in per_frame] == [p in (0, 1, 2, 5, 6, 9) for p in range(10)]


@pytest.mark.slow
def test_cli_burst_pacing_plays_a_file_pushed_like_tts(generator_ckpt, photo, speech_wav, tmp_path):
    import av

    out, stats = tmp_path / "burst.mp4", tmp_path / "stats.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            str(speech_wav),
            "--checkpoint",
            str(generator_ckpt),
            "--audio-pacing",
            "burst",
            "--to",
            str(out),
            "--stats-json",
            str(stats),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads(stats.read_text())
    assert abs(s["fps_sustained"] - 25) <= 0.3 and s["dropped"] == 0 and s["generated"] > 50
    from mediaio.audio import decode_audio

    clip_s = decode_audio(speech_wav).duration_s
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.rate == 48_000
        n_video = sum(1 for _ in c.decode(video=0))
    # The whole clip played, at 25 fps, plus at most the idle lead-in and the crossfade out.
    assert clip_s * FPS <= n_video <= clip_s * FPS + 12


class FailingSink:
    name = "failing"

    def __init__(self, after):
        self.after, self.frames = after, 0

    def send_video(self, frame):
        self.frames += 1
        if self.frames > self.after:
            raise ConnectionResetError("the server went away")

    def send_audio(self, chunk):
        pass

    def close(self):
        pass


def test_capture_engine_stops_its_source_when_a_sink_fails(photo, speech_wav):
    from models.errors import EngineFailure
    from realtime.clock import MonotonicClock
    from realtime.live import build_engine
    from realtime.sources.file import FileSource

    sink = FailingSink(after=5)
    eng = build_engine(str(photo), [sink], engine="procedural", clock=MonotonicClock())
    with pytest.raises(EngineFailure, match="sink failing failed: ConnectionResetError: the server went away"):
        eng.run(FileSource(str(speech_wav), loop=True), duration_s=60)
    # The source stopped right away instead of playing on for a minute into a dead engine.
    assert eng.stats.frames < 100


def test_capture_engine_keeps_feeding_other_sinks_while_one_is_blocked(photo, speech_wav):
    from mediaio.audio import decode_audio
    from realtime.clock import ManualClock
    from realtime.live import build_engine

    blocked, fine = BlockedSink(), WatchedSink()
    clock = ManualClock()
    eng = build_engine(str(photo), [blocked, fine], engine="procedural", clock=clock).start()
    wav = decode_audio(speech_wav).mono_16k()[:48_000]
    try:
        for start in range(0, len(wav), 320):  # 20 ms blocks, arriving when they end
            clock.advance_ns(20_000_000)
            eng.process_audio(wav[start : start + 320], 16_000, clock.now_ns(), None)
            # Time runs as fast as the test drives it: let the healthy sink have what was decided.
            assert fine.wait_for(eng._next_pts), "the healthy sink stalled behind the blocked one"
    finally:
        blocked.release.set()
        summary = eng.stop()
    assert summary["dropped"] == 0
    assert [f.pts for f in fine.frames] == list(range(len(fine.frames))) and len(fine.frames) >= 70
    assert len(blocked.pts) < len(fine.frames) and blocked.pts == sorted(blocked.pts)


class _DrivenStream:
    """Stands in for PortAudio's stream object only: the test plays the device's part by calling
    the sink's own callback, block by block, exactly as PortAudio would."""

    active = True

    def start(self):
        pass

    def stop(self):
        pass

    def close(self):
        pass


def _pull(sink, blocks, frames=320):
    out = np.zeros((frames, 1), np.float32)
    got = []
    for _ in range(blocks):
        sink._callback(out, frames, None, None)
        got.append(out[:, 0].copy())
    return np.concatenate(got)


def test_audio_passthrough_keeps_its_delay_after_an_underrun_and_plays_whole_bursts():
    from realtime.frames import AudioChunk
    from realtime.sinks.audio_out import AudioOutSink

    sink = AudioOutSink(delay_ms=200, sample_rate_hz=16_000, buffer_s=1.0)
    sink._stream = _DrivenStream()
    first = np.full(1600, 0.5, np.float32)
    sink.send_audio(AudioChunk(first, 16_000, 0, 0))
    heard = _pull(sink, 20)  # 400 ms: 200 ms of head start, 100 ms of sound, then the device runs dry
    assert not heard[:3200].any() and (heard[3200:4800] == 0.5).all() and not heard[4800:].any()
    assert sink.underruns == 1
    second = np.full(800, -0.25, np.float32)
    sink.send_audio(AudioChunk(second, 16_000, 1600, 0))
    heard = _pull(sink, 15)
    assert not heard[:3200].any() and (heard[3200:4000] == -0.25).all()  # the 200 ms are back

    # A 3 s burst into a 1 s ring: the writer waits for the device instead of cutting it short.
    burst = np.linspace(-0.9, 0.9, 48_000).astype(np.float32)
    played = []
    writer = threading.Thread(target=sink.send_audio, args=(AudioChunk(burst, 16_000, 2400, 0),))
    writer.start()
    while writer.is_alive() or sink._write > sink._read:
        # A device plays in real time, never faster than the writer fills the ring: pull a block
        # once one is there (or the writer is done).
        with sink._room:
            sink._room.wait_for(lambda: sink._write - sink._read >= 320 or not writer.is_alive(), 0.1)
        played.append(_pull(sink, 1))
    writer.join()
    played = np.concatenate(played)
    start = int(np.argmax(played != 0))
    assert sink.overruns == 0 and np.array_equal(played[start : start + len(burst)], burst)

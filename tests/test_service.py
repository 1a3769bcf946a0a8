"""The shared generator service and many sessions over it (realtime.service)."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from mediaio.audio import decode_audio
from realtime.clock import ManualClock
from realtime.config import EngineConfig
from realtime.service import DROPPED, GeneratorService, ServiceConfig, SessionHost

MS = 1_000_000


@pytest.fixture(scope="module")
def parts(generator_ckpt, photo, tmp_path_factory):
    """The real split generator of a random-weight checkpoint and two avatars (photo, mirror)."""
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.generator import RuntimeConfig, load_generator

    gen = load_generator(generator_ckpt, RuntimeConfig(), split=True)
    mirror = tmp_path_factory.mktemp("avatars") / "mirror.jpg"
    cv2.imwrite(str(mirror), cv2.imread(str(photo))[:, ::-1])
    avatars = []
    for path in (photo, mirror):
        av = load_avatar(AvatarConfig(str(path)))
        av.attach_features(gen, "test")
        avatars.append(av)
    return gen, avatars


class Recording:
    """The real decoder; remembers each batch as the labels its requests carried (mel[0, 0])."""

    def __init__(self, gen):
        self.gen, self.batches = gen, []

    def decode(self, mels, feats):
        self.batches.append([int(v) for v in mels[:, 0, 0, 0]])
        return self.gen.decode(mels, feats)


def mel(label: float) -> np.ndarray:
    return np.full((80, 16), label, np.float32)


def test_a_batch_equals_one_request_at_a_time(parts):
    gen, (a, b) = parts
    svc = GeneratorService(gen, ServiceConfig(max_batch=4))
    svc.register_avatar("a", a)
    svc.register_avatar("b", b)
    rng = np.random.default_rng(0)
    mels = [rng.standard_normal((80, 16)).astype(np.float32) for _ in range(3)]
    # Queued before the thread starts: all due together, so they go in one batch.
    futs = [svc.submit(av, 0, m, None) for av, m in zip(("a", "b", "a"), mels)]
    with svc:
        outs = [f.result(timeout=30) for f in futs]
    for av, m, out in zip((a, b, a), mels, outs):
        want = gen.decode(m[None, None], av.features_at(0))
        np.testing.assert_allclose(out, want, atol=1e-4)
    assert svc.summary()["batch_size_histogram"] == {"3": 1}
    assert not np.allclose(outs[0], outs[1])  # the mirrored avatar's features were used for b


def test_earliest_deadline_first_batching_what_is_queued(parts):
    gen, (a, _) = parts
    clock = ManualClock(1000 * MS)
    rec = Recording(gen)
    svc = GeneratorService(rec, ServiceConfig(max_batch=2), clock)
    svc.register_avatar("a", a)
    futs = [svc.submit("a", 0, mel(label), (1000 + label) * MS, session="s") for label in (5, 3, 4, 1, 2)]
    with svc:
        for f in futs:
            f.result(timeout=30)
    assert rec.batches == [[1, 2], [3, 4], [5]]
    s = svc.summary()
    assert s["batches"] == 3 and s["batch_size_mean"] == pytest.approx(5 / 3, abs=1e-3)
    assert s["decode_ms"]["p50"] is not None


def test_submit_many_reaches_a_running_decoder_as_one_batch(parts):
    """What Ray Serve's @serve.batch hands over must not be split by the decoder thread waking
    on the first request (it is already running and idle here)."""
    gen, (a, b) = parts
    rec = Recording(gen)
    with GeneratorService(rec, ServiceConfig(max_batch=8)) as svc:
        svc.register_avatar("a", a)
        svc.register_avatar("b", b)
        for round_ in range(20):
            futs = svc.submit_many([("a" if k % 2 else "b", 0, mel(10 * round_ + k), None, f"s{k}") for k in range(4)])
            for f in futs:
                f.result(timeout=30)
    assert [len(batch) for batch in rec.batches] == [4] * 20


def test_requests_past_their_deadline_are_dropped_and_counted(parts):
    gen, (a, _) = parts
    clock = ManualClock(1000 * MS)
    rec = Recording(gen)
    svc = GeneratorService(rec, ServiceConfig(), clock)
    svc.register_avatar("a", a)
    late = svc.submit("a", 0, mel(1), 999 * MS, session="s1")
    fine = svc.submit("a", 0, mel(2), 1040 * MS, session="s2")
    with svc:
        assert late.result(timeout=30) is DROPPED
        assert fine.result(timeout=30) is not DROPPED
    assert rec.batches == [[2]]
    s = svc.summary()
    assert s["dropped_late"] == 1
    assert s["per_session"] == {"s1": {"served": 0, "dropped": 1}, "s2": {"served": 1, "dropped": 0}}


def test_a_flooding_session_cannot_push_another_out_of_the_batch(parts):
    gen, (a, b) = parts
    clock = ManualClock(0)
    rec = Recording(gen)
    svc = GeneratorService(rec, ServiceConfig(max_batch=4), clock)
    svc.register_avatar("a", a)
    svc.register_avatar("b", b)
    futs = [svc.submit("a", 0, mel(label), label * MS, session="greedy") for label in range(1, 7)]
    futs.append(svc.submit("b", 0, mel(50), 50 * MS, session="polite"))
    with svc:
        for f in futs:
            f.result(timeout=30)
    # Every session's first request before anyone's second; then earliest deadline first.
    assert rec.batches == [[1, 50, 2, 3], [4, 5, 6]]


def test_the_engine_counts_frames_the_service_dropped(parts, speech_wav):
    """A closed service drops everything: the engine shows the idle/previous frame, counted."""
    from realtime.engine import Engine
    from realtime.service import ServiceRenderer

    gen, (a, _) = parts
    svc = GeneratorService(gen)
    svc.register_avatar("a", a)
    svc.close()
    clock = ManualClock(10**12)
    engine = Engine(a, ServiceRenderer(svc, "a", a, "hard"), [], EngineConfig(output_queue_ms=100_000), clock)
    wav = decode_audio(speech_wav).mono_16k()[: 16000 * 2]
    for start in range(0, len(wav), 320):
        clock.advance_ns(20 * MS)
        engine.process_audio(wav[start : start + 320], 16000, clock.now_ns(), None)
    kinds = []
    while len(engine.frames_q):
        kinds.append(engine.frames_q.get().meta["kind"])
    assert kinds.count("dropped") > 10 and "generated" not in kinds


class FailingSink:
    """Raises on its third frame: a sink that breaks mid-stream."""

    name = "failing"

    def __init__(self):
        self.frames = 0

    def send_video(self, frame):
        self.frames += 1
        if self.frames == 3:
            raise RuntimeError("sink broke on purpose")

    def send_audio(self, chunk):
        pass

    def close(self):
        pass


class CountingSink:
    name = "counting"

    def __init__(self):
        self.frames = 0
        self._cv = threading.Condition()

    def send_video(self, frame):
        with self._cv:
            self.frames += 1
            self._cv.notify_all()

    def wait_for(self, n: int, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: self.frames >= n, timeout_s)

    def send_audio(self, chunk):
        pass

    def close(self):
        pass


def test_a_failing_session_never_stalls_the_others(parts, speech_wav):
    from realtime.sources.file import FileSource

    gen, (a, b) = parts
    host = SessionHost(GeneratorService(gen, ServiceConfig(max_batch=4)), EngineConfig(blend="hard"))
    good = [CountingSink(), CountingSink()]
    host.add("good1", a, [good[0]], FileSource(str(speech_wav), loop=True))
    host.add("bad", b, [FailingSink()], FileSource(str(speech_wav), loop=True))
    host.add("good2", b, [good[1]], FileSource(str(speech_wav), loop=True), avatar_id="b2")
    host.start_all()
    bad = host.sessions["bad"]
    assert bad.wait(30), "the failing session did not end"
    assert bad.state == "failed" and "sink broke on purpose" in str(bad.error)
    # After the failure, the others keep getting frames from the shared service.
    for s in good:
        assert s.wait_for(s.frames + 20, 30), "a healthy session stalled after another one failed"
    summaries = host.close()
    assert [host.ended[k].state for k in ("good1", "good2")] == ["stopped", "stopped"]
    assert host.sessions == {}  # ended sessions are let go: only their outcome is kept
    assert summaries["good1"]["frames"] >= 20 and summaries["good2"]["frames"] >= 20
    per = host.service.summary()["per_session"]
    assert per["good1"]["served"] > 0 and per["good2"]["served"] > 0


def test_sessions_start_on_staggered_phases():
    from realtime.service.generator_service import GeneratorService as _G
    from realtime.service.sessions import SessionHost as _H

    class Gen:
        name = "none"

        def decode(self, mels, feats):  # never called: no session is fed here
            raise AssertionError

    clock = ManualClock(0)
    host = _H(_G(Gen(), clock=clock), EngineConfig(fps=25), clock=clock)
    starts = [host._next_start_ns() for _ in range(4)]
    host.service.close()
    phases = sorted(s % (40 * MS) for s in starts)
    assert phases == [0, 10 * MS, 20 * MS, 30 * MS]


def test_a_static_batch_one_openvino_decoder_runs_batches(parts, generator_ckpt, tmp_path):
    """The live int8 decoder is saved as OpenVINO IR at batch 1; the service's batches must run on it."""
    ov = pytest.importorskip("openvino")
    from export.cache import ensure_exported
    from export.metadata import SKIPS
    from export.quantize import _static_ov_model
    from export.runtime import OpenVinoRunner

    gen, (a, b) = parts
    decoder = ensure_exported(generator_ckpt, "split", "fp32")["decoder"]
    feats = a.features_at(0)
    SKIP_NAMES = SKIPS[: len(feats)]
    example = {"mel": np.zeros((1, 1, 80, 16), np.float32), **dict(zip(SKIP_NAMES, feats))}
    xml = tmp_path / "decoder-b1.xml"
    ov.save_model(_static_ov_model(decoder, example), str(xml), compress_to_fp16=False)
    run = OpenVinoRunner(xml, "f32")
    rng = np.random.default_rng(1)
    mels = rng.standard_normal((3, 1, 80, 16)).astype(np.float32)
    both = [a.features_at(0), b.features_at(0), a.features_at(0)]
    batched = run({"mel": mels, **{n: np.concatenate([f[k] for f in both]) for k, n in enumerate(SKIP_NAMES)}})[0]
    assert batched.shape[0] == 3
    for i in range(3):
        one = run({"mel": mels[i : i + 1], **dict(zip(SKIP_NAMES, both[i]))})[0]
        np.testing.assert_allclose(batched[i : i + 1], one, atol=1e-5)


def test_warm_up_runs_each_batch_size_once_before_sessions(parts):
    gen, (a, _) = parts
    rec = Recording(gen)
    svc = GeneratorService(rec, ServiceConfig(max_batch=3))
    svc.register_avatar("a", a)
    svc.warm_up(range(2, 6))  # sizes past max_batch are not warmed: never run
    assert [len(b) for b in rec.batches] == [2, 3]
    assert svc.summary()["batches"] == 0  # warm-up is not counted as served work


def test_a_dead_service_thread_fails_every_waiting_and_later_request(parts):
    """Not a decode error (those go to their batch): the thread itself breaks. Queued requests
    and later submits fail at once with GeneratorServiceDown instead of never resolving."""
    from realtime.service import GeneratorServiceDown

    gen, (a, _) = parts
    svc = GeneratorService(gen)
    svc.register_avatar("a", a)

    def broken_scheduler(now_ns):
        raise RuntimeError("scheduler bug on purpose")

    svc._take = broken_scheduler  # the decoder thread's own code fails, outside any decode
    queued = [svc.submit("a", 0, mel(1), None), svc.submit("a", 0, mel(2), None)]
    svc.start()
    for f in queued:
        with pytest.raises(GeneratorServiceDown, match="scheduler bug on purpose"):
            f.result(timeout=10)
    later = svc.submit("a", 0, mel(3), None)
    with pytest.raises(GeneratorServiceDown, match="decoder thread died of RuntimeError"):
        later.result(timeout=0)  # already resolved: no thread is needed to fail it
    assert isinstance(svc.down, GeneratorServiceDown)
    svc.close()


def test_sessions_end_cleanly_when_the_service_thread_dies(parts, speech_wav):
    from realtime.service import GeneratorServiceDown
    from realtime.sources.file import FileSource

    gen, (a, b) = parts
    svc = GeneratorService(gen, ServiceConfig(max_batch=4))
    host = SessionHost(svc, EngineConfig(blend="hard"))
    sinks = [CountingSink(), CountingSink()]
    host.add("s1", a, [sinks[0]], FileSource(str(speech_wav), loop=True))
    host.add("s2", b, [sinks[1]], FileSource(str(speech_wav), loop=True))
    host.start_all()
    sessions = dict(host.sessions)  # they leave host.sessions as they end
    for s in sinks:
        assert s.wait_for(10, 30), "sessions did not stream before the break"

    def broken_scheduler(now_ns):
        raise RuntimeError("scheduler bug on purpose")

    svc._take = broken_scheduler
    with svc._cv:  # wake the thread so it meets the bug now
        svc._cv.notify_all()
    for sid in ("s1", "s2"):
        session = sessions[sid]
        assert session.wait(30), f"session {sid} hung on a dead service"
        assert session.state == "failed"
        assert isinstance(session.error, GeneratorServiceDown), repr(session.error)
    host.close()


class Stuck:
    """The real decoder until `hold` is set: then each call blocks until `release` is set."""

    def __init__(self, gen):
        self.gen, self.hold, self.release, self.entered = gen, threading.Event(), threading.Event(), threading.Event()

    def decode(self, mels, feats):
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(60)
        return self.gen.decode(mels, feats)


def test_a_stuck_decoder_costs_sessions_dropped_frames_not_a_hang(parts, speech_wav):
    """The thread lives but answers nothing: each session waits no longer than the frame's
    deadline plus grace, shows the previous frame, counts a drop, and streams on."""
    from realtime.service import HostConfig, WaitConfig
    from realtime.sources.file import FileSource

    gen, (a, _) = parts
    stuck = Stuck(gen)
    svc = GeneratorService(stuck, ServiceConfig(max_batch=4))
    host = SessionHost(svc, EngineConfig(blend="hard"), HostConfig(wait=WaitConfig(grace_ms=50)))
    sink = CountingSink()
    host.add("s1", a, [sink], FileSource(str(speech_wav), loop=True))
    host.start_all()
    assert sink.wait_for(10, 30)
    stuck.hold.set()
    assert stuck.entered.wait(30), "the decoder was never called after the hold"
    seen = sink.frames
    assert sink.wait_for(seen + 25, 30), "the session stopped delivering frames while the decoder was stuck"
    session = host.sessions["s1"]
    assert not session.done
    renderer = session.engine.renderer
    assert renderer.timeouts >= 1
    stuck.release.set()
    summary = host.close()["s1"]
    assert session.state == "stopped"
    assert summary["dropped"] >= 1


def test_a_waiter_that_cancels_its_future_neither_kills_the_service_nor_gets_decoded(parts):
    """asyncio.wrap_future cancels the service's future when the awaiting task is cancelled
    (the Ray backend's service actor): the decoder thread must live on."""
    gen, (a, _) = parts
    rec = Recording(gen)
    svc = GeneratorService(rec)
    svc.register_avatar("a", a)
    gone = svc.submit("a", 0, mel(1), None)
    assert gone.cancel()
    kept = svc.submit("a", 0, mel(2), None)
    with svc:
        assert kept.result(timeout=30) is not DROPPED
        assert svc.down is None
    assert rec.batches == [[2]]
    assert svc.summary()["cancelled"] == 1


def test_an_avatar_removed_mid_flight_drops_only_its_own_request(parts):
    """A session ending (its avatar unregistered) after its request was taken into a batch:
    that request is dropped, the others of the batch are decoded, and the service lives on."""
    gen, (a, b) = parts
    rec = Recording(gen)
    svc = GeneratorService(rec, ServiceConfig(max_batch=4))
    svc.register_avatar("a", a)
    svc.register_avatar("b", b)
    take = svc._take

    def take_then_remove_b(now_ns):  # the session on "b" ends just after the batch was taken
        batch, late = take(now_ns)
        svc.unregister_avatar("b")
        return batch, late

    svc._take = take_then_remove_b
    futs = [svc.submit("a", 0, mel(1), None, "s1"), svc.submit("b", 0, mel(2), None, "s2")]
    futs.append(svc.submit("a", 0, mel(3), None, "s3"))
    with svc:
        kept1, gone, kept3 = (f.result(timeout=30) for f in futs)
        assert svc.down is None
    assert gone is DROPPED
    np.testing.assert_allclose(kept1, gen.decode(mel(1)[None, None], a.features_at(0)), atol=1e-4)
    np.testing.assert_allclose(kept3, gen.decode(mel(3)[None, None], a.features_at(0)), atol=1e-4)
    assert rec.batches == [[1, 3]]  # one batch, without the request whose avatar went
    assert svc.summary()["cancelled"] == 1


def test_a_late_unregister_leaves_a_newer_registration_alone(parts):
    """What a Serve replica does: an evicted avatar's holder is finalised after the same key was
    loaded again; the reload's features stay."""
    from realtime.service.serve_backend import _HeldAvatar

    gen, (a, b) = parts
    svc = GeneratorService(gen)
    svc.register_avatar("k", a)
    old = _HeldAvatar("k", svc, a)
    svc.register_avatar("k", b, replace=True)  # loaded again (here: different features, to tell them apart)
    del old  # the old holder's finaliser runs now
    with svc:
        out = svc.submit("k", 0, mel(1), None).result(timeout=30)
    np.testing.assert_allclose(out, gen.decode(mel(1)[None, None], b.features_at(0)), atol=1e-4)
    svc.unregister_avatar("k", b)
    with pytest.raises(KeyError):
        svc.submit("k", 0, mel(1), None)


def test_an_ended_session_is_let_go_before_it_reports_done_and_its_id_can_start_again(parts, speech_wav):
    """The host drops an ended session (engine, avatar frames, features) and only then does a
    waiter see it done: a session started under the same id right after keeps its avatar."""
    from realtime.sources.file import FileSource

    gen, (a, b) = parts
    host = SessionHost(GeneratorService(gen, ServiceConfig(max_batch=4)), EngineConfig(blend="hard"))
    in_cleanup, release = threading.Event(), threading.Event()

    def slow_cleanup(session):  # the owner's end-of-session work (the manager's record), held open
        in_cleanup.set()
        release.wait(30)

    first_sink = CountingSink()
    old = host.add("x", a, [first_sink], FileSource(str(speech_wav), loop=True), 0.5, on_end=slow_cleanup)
    host.start("x")
    assert in_cleanup.wait(30), "the 0.5 s session did not end"
    assert not old.done  # nobody sees it done while its cleanup runs
    assert "x" not in host.sessions and host.ended["x"].state == "stopped"
    with pytest.raises(KeyError):  # its features left the service with it
        host.service.submit("x", 0, mel(1), None)
    release.set()
    assert old.wait(30)
    sink = CountingSink()
    new = host.add("x", b, [sink], FileSource(str(speech_wav), loop=True))
    host.start("x")
    assert sink.wait_for(25, 30), "the restarted session did not stream"
    summaries = host.close()
    assert new.state == "stopped" and new.error is None
    assert summaries["x"]["frames"] >= 25
    assert host.sessions == {}

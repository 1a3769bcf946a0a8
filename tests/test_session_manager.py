"""Many sessions started and stopped at will over one shared generator (realtime.service.manager),
what `lipsync serve --sessions` hosts."""

from __future__ import annotations

import av
import cv2
import pytest

from models.errors import LipsyncError
from realtime.config import EngineConfig
from realtime.generator import RuntimeConfig
from realtime.service.manager import SessionManager, SessionRequest


def video_frames(path) -> int:
    with av.open(str(path)) as f:
        return sum(1 for _ in f.decode(video=0))


@pytest.fixture()
def mirror(photo, tmp_path):
    p = tmp_path / "mirror.jpg"
    cv2.imwrite(str(p), cv2.imread(str(photo))[:, ::-1])
    return p


def test_sessions_start_and_stop_independently_over_one_generator(generator_ckpt, photo, mirror, speech_wav, tmp_path):
    mgr = SessionManager(str(generator_ckpt), RuntimeConfig(), EngineConfig(blend="hard"))
    try:
        mgr.start(SessionRequest("a", str(photo), str(speech_wav), (str(tmp_path / "a.mkv"),), duration_s=2.0))
        mgr.start(SessionRequest("b", str(mirror), str(speech_wav), (str(tmp_path / "b.mkv"),)))
        assert mgr.wait("a", 60), "a 2 s session did not end"
        states = {d["id"]: d["state"] for d in mgr.list()}
        assert states == {"a": "stopped", "b": "running"}  # a ending left b streaming
        a = mgr.describe("a")
        # The same id again, now on the other avatar: its features replace the old ones.
        mgr.start(SessionRequest("a", str(mirror), str(speech_wav), (str(tmp_path / "a2.mkv"),), duration_s=1.0))
        assert mgr.wait("a", 60)
        a2 = mgr.describe("a")
        b = mgr.stop("b")
        assert b["state"] == "stopped" and b["frames"] > 0 and "error" not in b
        per = mgr.service_summary()["per_session"]
        assert per["a"]["served"] > 0 and per["b"]["served"] > 0  # one service decoded for both
    finally:
        mgr.close()
    # Each session's frames went to its own file, finalised when it ended (under load a queue on
    # the way may drop some: the count is what its sink took); 2 s and 1 s of capture, less the
    # frames whose mel window would need audio after the input ended.
    for name, d in (("a.mkv", a), ("a2.mkv", a2), ("b.mkv", b)):
        (sink,) = d["sinks"].values()
        assert video_frames(tmp_path / name) == sink["delivered"] > 0, (name, d)
        assert sink["delivered"] <= d["frames"]
    assert 40 <= a["frames"] <= 50 and 15 <= a2["frames"] <= 25


def test_without_a_checkpoint_sessions_run_the_procedural_renderer(photo, speech_wav, tmp_path):
    mgr = SessionManager(None, cfg=EngineConfig(blend="hard"))
    try:
        mgr.start(SessionRequest("p", str(photo), str(speech_wav), (str(tmp_path / "p.mkv"),), duration_s=1.0))
        assert mgr.wait("p", 60)
        p = mgr.describe("p")
        assert p["state"] == "stopped" and 15 <= p["frames"] <= 25
    finally:
        mgr.close()
    (sink,) = p["sinks"].values()
    assert video_frames(tmp_path / "p.mkv") == sink["delivered"] > 0


@pytest.mark.parametrize(
    "doc, says",
    [
        ({"id": "x", "avatar": "a.jpg", "colour": "red"}, "unknown key 'colour'"),
        ({"avatar": "a.jpg"}, "'id'"),
        ({"id": "x", "avatar": "a.jpg", "outputs": [3]}, "list of output strings"),
        ({"id": "x", "avatar": "a.jpg", "duration_s": -1}, "positive number"),
        ([1, 2], "a JSON object"),
    ],
)
def test_malformed_session_descriptions_are_refused_in_one_line(doc, says):
    with pytest.raises(LipsyncError, match=says) as e:
        SessionRequest.from_json(doc)
    assert "\n" not in str(e.value)


def test_bad_sessions_are_refused_and_a_running_id_is_not_taken_twice(photo, speech_wav, tmp_path):
    mgr = SessionManager(None, cfg=EngineConfig(blend="hard"))
    try:
        with pytest.raises(LipsyncError, match="existing photo or video"):
            mgr.start(SessionRequest("x", str(tmp_path / "missing.jpg"), str(speech_wav)))
        with pytest.raises(LipsyncError, match="rtmp"):
            mgr.start(SessionRequest("x", str(photo), str(speech_wav), ("ftp://example.invalid/x",)))
        assert mgr.list() == []  # refused requests leave nothing behind
        mgr.start(SessionRequest("x", str(photo), str(speech_wav), ("null",)))
        with pytest.raises(LipsyncError, match="already running"):
            mgr.start(SessionRequest("x", str(photo), str(speech_wav), ("null",)))
        assert mgr.stop("x")["state"] == "stopped"
    finally:
        mgr.close()

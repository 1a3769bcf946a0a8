"""Sessions as Ray actors (realtime.service.ray_backend), on a real local Ray started inside a
network namespace that has only loopback (platform.md: outside one, a local Ray binds and
advertises the machine's public address)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _namespace_missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install -e '.[ray]')"
    if os.geteuid() != 0:
        return "a loopback-only network namespace needs root (unshare -n)"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (util-linux / iproute2)"
    return None


pytestmark = pytest.mark.skipif(_namespace_missing() is not None, reason=str(_namespace_missing()))


def in_namespace(args: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    cmd = " ".join(["ip link set lo up; exec", *[f"'{a}'" for a in args]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        ["unshare", "-n", "bash", "-c", cmd], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=ROOT
    )


def run_script(script: str, generator_ckpt, photo, speech_wav, out: Path, timeout_s: float) -> dict:
    """tests/SCRIPT CHECKPOINT PHOTO AUDIO OUT_JSON in a loopback-only namespace; what it wrote."""
    args = [sys.executable, str(ROOT / "tests" / script), str(generator_ckpt), str(photo), str(speech_wav), str(out)]
    run = in_namespace(args, timeout_s=timeout_s)
    assert run.returncode == 0 and out.is_file(), run.stderr[-3000:]
    return json.loads(out.read_text())


def test_local_ray_is_refused_outside_a_loopback_only_namespace():
    from realtime.service.ray_backend import loopback_only

    if loopback_only():
        pytest.skip("this test process already runs in a loopback-only namespace")
    from models.errors import LipsyncError
    from realtime.service.ray_backend import init_local_ray

    with pytest.raises(LipsyncError, match="only loopback"):
        init_local_ray()


def test_a_killed_session_actor_streams_again_within_2_s(generator_ckpt, photo, speech_wav, tmp_path):
    # Export and avatar caches warmed here, as a deployment would have them: the actors load.
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.generator import RuntimeConfig, load_generator

    gen = load_generator(generator_ckpt, RuntimeConfig(), split=True)
    load_avatar(AvatarConfig(str(photo))).attach_features(gen, f"{gen.name}:test")
    doc = run_script("ray_restart.py", generator_ckpt, photo, speech_wav, tmp_path / "ray.json", 150)
    assert doc["node"] == "127.0.0.1"
    assert all(s["frames"] >= 25 for s in doc["before"])
    assert doc["after"] is not None, "the killed session actor never came back"
    assert doc["a_info"]["incarnation"] == "restarted" and doc["after"]["pid"] != doc["before"][0]["pid"]
    assert doc["c_stop"] in ("timed out", "returned")
    assert doc["c_tracked_after_stop"] is False and doc["c_alive_after_stop"] is False, doc
    assert doc["restart_to_first_frame_s"] < 2.0, doc["restart_to_first_frame_s"]
    assert doc["a_streams_on"]["frames"] >= doc["after"]["frames"] + 25
    assert doc["b_during"]["state"] == "running"  # the other session streamed on through the kill
    s = doc["summaries"]
    assert s["a"]["hop_samples"] > 0 and s["b"]["hop_samples"] > 0
    assert s["services"][0]["frames"] > 0


def test_sessions_stream_through_a_serve_deployment_routed_by_avatar(generator_ckpt, photo, speech_wav, tmp_path):
    """The GPU-node layout, run on CPU: the generator as a Ray Serve deployment (@serve.batch,
    @serve.multiplexed by avatar key), two session actors on two avatars."""
    pytest.importorskip("ray.serve")
    doc = run_script("ray_serve_sessions.py", generator_ckpt, photo, speech_wav, tmp_path / "serve.json", 280)
    assert doc["node"] == "127.0.0.1"
    assert doc["expired_request"] is None  # past its deadline: dropped, not decoded
    assert doc["no_deadline_face"] is not None and doc["no_deadline_face"][1:] == [96, 3]
    for first, later in zip(doc["first"], doc["later"]):
        assert first["frames"] >= 25 and later["frames"] >= first["frames"] + 50, (first, later)
    for sid in ("a", "b"):
        s = doc["sessions"][sid]
        assert s["state"] == "stopped" and s["error"] is None, s
        assert s["hop_samples"] > 0
    dep = doc["deployment"]
    # Both avatars' features were made on the replica, and the two sessions' requests met in batches.
    assert dep["avatars_loaded"] == 2, dep
    assert set(dep["per_session"]) >= {"a", "b"}
    assert max(int(k) for k in dep["batch_size_histogram"]) >= 2, dep["batch_size_histogram"]


@pytest.mark.slow
def test_thirty_ray_sessions_started_and_stopped_over_the_api_return_their_memory(
    generator_ckpt, photo, speech_wav, tmp_path
):
    """`lipsync serve --backend ray`: each stopped session's actor is killed and the node
    service lets go of its avatar; neither the server nor the service actor grows."""
    doc = run_script("ray_sessions_memory.py", generator_ckpt, photo, speech_wav, tmp_path / "memory.json", 600)
    assert doc["server_exit"] == 0, doc["server_stderr_tail"]
    assert doc["session_actors_left"] == [] and doc["service_avatars_left"] == [], doc
    for who in ("server_rss_mb", "service_rss_mb"):
        rss = doc[who]
        assert rss["30"] - rss["3"] < 60, f"{who} grew from the 3rd to the 30th session: {rss}"

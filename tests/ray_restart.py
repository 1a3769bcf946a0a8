"""Run inside a loopback-only network namespace (tests/test_ray.py does): two sessions as Ray
actors over the node's generator-service actor; one is killed and must stream again.

    python tests/ray_restart.py CHECKPOINT PHOTO AUDIO OUT_JSON

Prints nothing useful; writes the figures to OUT_JSON for the test to assert on.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(ckpt: str, photo: str, audio: str, out: str) -> None:
    import cv2
    import ray

    from realtime.config import EngineConfig
    from realtime.generator import RuntimeConfig, load_generator
    from realtime.service.ray_backend import (
        GeneratorSpec,
        RaySessionHost,
        SessionPlacement,
        SessionSpec,
        init_local_ray,
    )
    from realtime.sources.file import FileSource

    mirror = str(Path(out).with_name("mirror.jpg"))
    cv2.imwrite(mirror, cv2.imread(photo)[:, ::-1])
    t_init = time.monotonic()
    init_local_ray(num_cpus=3, log_to_driver=False)  # the service, a and b, and c at the end
    doc: dict = {"ray_init_s": round(time.monotonic() - t_init, 2), "node": ray.nodes()[0]["NodeManagerAddress"]}
    gen = GeneratorSpec(functools.partial(load_generator, ckpt, RuntimeConfig(), split=True), "test", num_cpus=1.0)
    host = RaySessionHost(gen, EngineConfig(blend="hard"), SessionPlacement(num_cpus=0.5))
    source = functools.partial(FileSource, audio, loop=True)
    a = host.add(SessionSpec("a", photo, source))
    b = host.add(SessionSpec("b", mirror, source))
    t0 = time.monotonic()
    first = ray.get([s.wait_frames.remote(25, 60) for s in (a, b)], timeout=90)
    doc["startup_s"] = round(time.monotonic() - t0, 2)
    doc["before"] = first
    b_before = ray.get(b.wait_frames.remote(0, 0))["frames"]
    old_pid = first[0]["pid"]

    kill_ns = time.monotonic_ns()
    host.kill("a")
    deadline = time.monotonic() + 30
    again = None
    while time.monotonic() < deadline:  # a call may still reach the dying process: wait for the new one
        r = ray.get(a.wait_frames.remote(1, 30), timeout=60)
        if r["pid"] != old_pid:
            again = r
            break
    doc["after"] = again
    if again is not None and again["first_frame_ns"] is not None:
        doc["restart_to_first_frame_s"] = round((again["first_frame_ns"] - kill_ns) / 1e9, 3)
        info = ray.get(a.info.remote(), timeout=30)
        doc["restart_steps_s"] = {  # where the time went: new worker process, actor init, first frame
            "kill_to_process_start": round((info["process_started_ns"] - kill_ns) / 1e9, 3),
            "kill_to_init": round((info["init_ns"] - kill_ns) / 1e9, 3),
            "init": round(info["ready_ms"] / 1e3, 3),
            "ready_to_first_frame": round(
                (again["first_frame_ns"] - info["init_ns"]) / 1e9 - info["ready_ms"] / 1e3, 3
            ),
        }
        doc["a_streams_on"] = ray.get(a.wait_frames.remote(again["frames"] + 25, 30), timeout=40)
    doc["a_info"] = ray.get(a.info.remote(), timeout=30)
    doc["b_during"] = ray.get(b.wait_frames.remote(b_before + 25, 30), timeout=40)
    # A stop whose summary does not come back in time: the actor is killed all the same, and
    # tracked until it is (it used to be forgotten first and stream on, untracked).
    c = host.add(SessionSpec("c", photo, source))
    ray.get(c.wait_frames.remote(5, 60), timeout=90)
    try:
        host.stop("c", timeout_s=0.001)
        doc["c_stop"] = "returned"
    except ray.exceptions.GetTimeoutError:
        doc["c_stop"] = "timed out"
    doc["c_tracked_after_stop"] = "c" in host.actors
    try:
        ray.get(c.info.remote(), timeout=30)
        doc["c_alive_after_stop"] = True
    except ray.exceptions.RayActorError:
        doc["c_alive_after_stop"] = False
    doc["summaries"] = host.close()
    Path(out).write_text(json.dumps(doc, indent=1, default=str))
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""Run inside a loopback-only network namespace (tests/test_ray.py does): the generator as a
Ray Serve deployment (a real local Ray and Serve, not Serve's local testing mode), two session
actors on two avatars routed to it by avatar key.

    python tests/ray_serve_sessions.py CHECKPOINT PHOTO AUDIO OUT_JSON

Writes the figures to OUT_JSON for the test to assert on.
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
    import numpy as np
    import ray
    from ray import serve

    from realtime.config import EngineConfig
    from realtime.generator import RuntimeConfig, load_generator
    from realtime.service.ray_backend import RaySessionHost, SessionPlacement, SessionSpec, init_local_ray
    from realtime.service.serve_backend import ServeConfig, ServeTarget, avatar_key, generator_app
    from realtime.sources.file import FileSource

    mirror = str(Path(out).with_name("mirror.jpg"))
    cv2.imwrite(mirror, cv2.imread(photo)[:, ::-1])
    init_local_ray(num_cpus=3, log_to_driver=False)
    serve.start(proxy_location="Disabled")  # sessions use handles; no HTTP ingress is needed
    cfg = EngineConfig(blend="hard")
    # A wait long enough that two sessions' requests meet in one batch; CPU-sized decode budget.
    scfg = ServeConfig(num_cpus=1.0, max_batch=4, batch_wait_ms=15.0, decode_ms=20.0)
    make = functools.partial(load_generator, ckpt, RuntimeConfig(), split=True)
    handle = serve.run(generator_app(make, "test", cfg, scfg), name=scfg.app_name, route_prefix=None)
    doc: dict = {"node": ray.nodes()[0]["NodeManagerAddress"]}

    # A request already past its deadline is answered with a drop, never decoded.
    loaded = handle.options(multiplexed_model_id=avatar_key(photo)).load.remote().result(timeout_s=300)
    mel = np.zeros((80, 16), np.float32)
    by_avatar = handle.options(multiplexed_model_id=avatar_key(photo))
    face, _ = by_avatar.face.remote(0, mel, 0, "probe").result(timeout_s=60)
    doc["expired_request"] = None if face is None else list(face.shape)
    face, _ = by_avatar.face.remote(0, mel, None, "probe").result(timeout_s=60)
    doc["no_deadline_face"] = None if face is None else list(face.shape)
    doc["loaded"] = loaded

    host = RaySessionHost(ServeTarget(scfg.app_name, scfg.deployment_name), cfg, SessionPlacement(num_cpus=0.5))
    source = functools.partial(FileSource, audio, loop=True)
    a = host.add(SessionSpec("a", photo, source))
    b = host.add(SessionSpec("b", mirror, source))
    t0 = time.monotonic()
    doc["first"] = ray.get([s.wait_frames.remote(25, 120) for s in (a, b)], timeout=180)
    doc["startup_s"] = round(time.monotonic() - t0, 2)
    doc["later"] = ray.get(
        [s.wait_frames.remote(r["frames"] + 50, 60) for s, r in zip((a, b), doc["first"])], timeout=90
    )
    sessions = host.close()
    doc["sessions"] = {k: v for k, v in sessions.items() if k != "services"}
    doc["deployment"] = handle.summary.remote().result(timeout_s=60)
    Path(out).write_text(json.dumps(doc, indent=1, default=str))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])

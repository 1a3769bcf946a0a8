"""Run inside a loopback-only network namespace (tests/test_ray.py does): a real
`lipsync serve --backend ray`, 30 sessions started and stopped over its API, one after another.

    python tests/ray_sessions_memory.py CHECKPOINT PHOTO AUDIO OUT_JSON

Writes the server's and the node service actor's RSS after each session, and what is left on
Ray at the end (session actors alive, avatars the service still holds), to OUT_JSON.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from test_session_lifecycle import FP32, allowed, rss_mb, serve, start_and_stop  # noqa: E402


def service_rss(_pid=None) -> float:
    import ray

    from realtime.service.ray_backend import NAMESPACE, SERVICE_PREFIX

    named = ray.util.list_named_actors(all_namespaces=True)
    (name,) = [a["name"] for a in named if a["name"].startswith(SERVICE_PREFIX)]
    return ray.get(ray.get_actor(name, namespace=NAMESPACE).summary.remote(), timeout=60)["rss_mb"]


def main(ckpt: str, photo: str, audio: str, out: str) -> None:
    import ray

    from realtime.service.ray_backend import NAMESPACE, SERVICE_PREFIX, SESSION_PREFIX

    empty = Path(tempfile.mkdtemp()) / "none.json"
    empty.write_text("[]")
    args = ("--sessions", empty, "--checkpoint", ckpt, "--blend", "hard", *FP32, "--backend", "ray")
    proc, api = serve(*args, *allowed(Path(photo).parent))
    doc: dict = {}
    try:
        server: dict = {}

        def both(pid):  # the server's RSS kept aside; the service actor's returned
            server[len(server) + 1] = rss_mb(pid)
            if not ray.is_initialized():  # the server started Ray; this process joins it
                ray.init(address="auto", namespace=NAMESPACE, log_to_driver=False)
            return service_rss()

        doc["service_rss_mb"] = start_and_stop(api, 30, photo, audio, both, proc.pid)
        doc["server_rss_mb"] = server
        named = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
        doc["session_actors_left"] = [n for n in named if n.startswith(SESSION_PREFIX)]
        (svc,) = [n for n in named if n.startswith(SERVICE_PREFIX)]
        doc["service_avatars_left"] = ray.get(ray.get_actor(svc, namespace=NAMESPACE).avatars.remote(), timeout=60)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        doc["server_exit"] = proc.returncode
        doc["server_stderr_tail"] = err[-2000:]
        Path(out).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:5])

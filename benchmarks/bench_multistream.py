#!/usr/bin/env python3
"""N live avatars on one machine: one process sharing a batching generator service, against
one process per stream (today's way), in the same run.

    python benchmarks/bench_multistream.py --streams 1 2 4 6 --seconds 15 --json bench-out/multi.json \
        [--backend inprocess|processes|ray] [--checkpoint PTH] [--avatar IMG] [--audio FILE] [--aligned]

Each stream: its own avatar made from the photo (mirrors and crops, so features differ), the
speech looped from a different starting point, paced in real time as a microphone delivers it,
to a null sink. With --backend inprocess (default) every N runs twice: inprocess, then the
processes baseline. Per N, JSON {"streams", "backend", "per_stream": [{"fps_sustained",
"dropped", "processing_latency_ms": {p50, p95, p99}}], "cpu_percent" (of all cores, the whole
backend), "batch_size_mean", "baseline": the same for processes}; one summary line per N on stdout.
With --backend ray the sessions are Ray actors over one generator-service actor (a local Ray,
only inside a loopback-only network namespace), each stream also reports "actor_hop_ms" (its
round trip to the service actor minus the time spent inside it), then the processes baseline.
--backend ray-serve: the same sessions, the generator a Ray Serve deployment (@serve.batch,
routed by avatar) as on GPU nodes; here on CPU, to see what Serve's per-request cost is.

Both backends run the same decoder: the precision ladder's choice for the first avatar, cropped
to the first row any avatar shows; choosing it and computing avatar features happen first in a
child process, so the measured processes start warm (no torch, no NNCF). Without --checkpoint a
stand-in checkpoint is made (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import logged_lines, standin_checkpoint, write_json  # noqa: E402

FPS = 25.0


def make_avatars(photo: str, n: int, outdir: Path) -> list[str]:
    """n distinct stills from one photo: the photo, its mirror, then crops of both."""
    import cv2

    img = cv2.imread(photo)
    if img is None:
        raise SystemExit(f"--avatar: expected an image file, found {photo!r} unreadable; pass a .jpg/.png")
    h, w = img.shape[:2]
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        v = img[:, ::-1] if k % 2 else img
        cut = k // 2  # crop a little more from the corners for each further pair
        if cut:
            dy, dx = (cut * h) // 40, (cut * w) // 40
            v = v[dy : h - dy // 2, dx // 2 : w - dx]
        p = outdir / f"avatar{k}.png"
        cv2.imwrite(str(p), v)
        paths.append(str(p))
    return paths


# -- child: choose the decoder, warm the feature cache ----------------------------------------------
def prepare(ckpt: str, avatars: list[str]) -> dict:
    from export.precision import choose
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.compositor import first_shown_row
    from realtime.generator import ladder_samples
    from realtime.live import default_runtime

    loaded = [load_avatar(AvatarConfig(p, fps=FPS)) for p in avatars]
    first_row = min(first_shown_row(a.boxes, a.paste_points()) for a in loaded)
    a0 = loaded[0]
    with logged_lines("export") as lines:
        c = choose(ckpt, default_runtime(), first_row=first_row, avatar=ladder_samples(avatars[0], a0))
    spec = {
        "checkpoint": ckpt,
        "encoder": str(c.encoder_path),
        "decoder": str(c.decoder_path),
        "runtime": c.runtime,
        "precision": c.precision,
        "device": c.device,
        "first_row": first_row,
        "ladder": lines,
    }
    gen = load_spec(spec)
    for a in loaded:
        a.attach_features(gen, f"{gen.name}:{ckpt}")
    spec["generator"] = gen.name
    return spec


def load_spec(spec: dict):
    from realtime import threads
    from realtime.generator import RuntimeConfig, SplitGenerator

    cfg = RuntimeConfig(
        runtime=spec["runtime"],
        precision=spec["precision"],
        device=spec["device"],
        intra_op_threads=threads.current().inference_threads,
    )
    return SplitGenerator(spec["encoder"], spec["decoder"], cfg, first_row=spec["first_row"])


def rotated_source(audio: str, k: int, n: int):
    """The speech looped, starting k/n of the way in: streams do not all speak in unison."""
    import numpy as np

    from realtime.sources.file import FileSource

    src = FileSource(audio, loop=True)
    src.pcm = np.roll(src.pcm, -(len(src.pcm) * k // max(n, 1)))
    return src


class CpuMeter:
    """Process CPU over a wall interval, as % of all cores."""

    def __init__(self):
        self.cpu0, self.wall0 = time.process_time(), time.monotonic()

    def percent(self) -> float:
        wall = max(1e-9, time.monotonic() - self.wall0)
        return 100 * self.cpu_s() / wall / (os.cpu_count() or 1)

    def cpu_s(self) -> float:
        return time.process_time() - self.cpu0


def per_stream(summary: dict) -> dict:
    keep = ("fps_sustained", "dropped", "processing_latency_ms", "frames", "generated")
    return {k: summary.get(k) for k in keep}


def session_stages(summaries: list[dict]) -> dict:
    """CPU and wall ms per output frame of each stage, averaged over the sessions (each session's
    own threads: mel, scheduling, conversion, paste; its wait for the service), and each engine
    thread's CPU ms per frame, averaged likewise."""
    out: dict = {"stages": {}, "thread_cpu_ms_per_frame": {}}
    n = max(1, len(summaries))
    for s in summaries:
        st = s.get("stages") or {}
        for name, v in st.get("stages", {}).items():
            acc = out["stages"].setdefault(name, {"cpu_ms_per_frame": 0.0, "wall_ms_per_frame": 0.0})
            acc["cpu_ms_per_frame"] += v["cpu_ms_per_frame"] / n
            acc["wall_ms_per_frame"] += v["wall_ms_per_frame"] / n
        for name, ms in st.get("thread_cpu_ms_per_frame", {}).items():
            out["thread_cpu_ms_per_frame"][name] = out["thread_cpu_ms_per_frame"].get(name, 0.0) + ms / n
    return {
        "stages": {k: {m: round(x, 3) for m, x in v.items()} for k, v in out["stages"].items()},
        "thread_cpu_ms_per_frame": {k: round(v, 3) for k, v in out["thread_cpu_ms_per_frame"].items()},
    }


# -- backend: one process, one service ---------------------------------------------------------------
def run_inprocess(spec: dict, avatars: list[str], audio: str, seconds: float, stagger: bool) -> dict:
    from realtime.config import EngineConfig
    from realtime.service import GeneratorService, HostConfig, SessionHost, prepare_avatar
    from realtime.sinks.base import NullSink

    gen = load_spec(spec)
    cfg = EngineConfig()
    host = SessionHost(GeneratorService(gen), cfg, HostConfig(stagger=stagger))
    n = len(avatars)
    for k, path in enumerate(avatars):
        av = prepare_avatar(path, gen, spec["checkpoint"], cfg)
        host.add(f"s{k}", av, [NullSink()], rotated_source(audio, k, n), seconds)
    meter = CpuMeter()
    sessions = dict(host.sessions)  # an ended session leaves host.sessions
    host.start_all()
    for s in sessions.values():
        s.wait(seconds + 60)
    cpu, cpu_s = meter.percent(), meter.cpu_s()
    failed = {sid: str(s.error) for sid, s in sessions.items() if s.error is not None}
    summaries = host.close()
    svc = host.service.summary()
    frames = sum(s["frames"] for s in summaries.values() if s)
    return {
        "streams": n,
        "backend": "inprocess",
        "stagger": stagger,
        "per_stream": [per_stream(summaries[f"s{k}"]) for k in range(n)],
        "cpu_percent": round(cpu, 1),
        # all cores' CPU per output frame, every stream together
        "cpu_ms_per_frame": round(cpu_s * 1000 / max(frames, 1), 2),
        "batch_size_mean": svc["batch_size_mean"],
        "session_stages": session_stages([s for s in summaries.values() if s]),
        "service_stages": svc["stages"],  # the decoder thread's, per frame decoded
        "service": {
            k: svc[k]
            for k in (
                "batches",
                "batch_size_histogram",
                "decode_ms",
                "queue_wait_ms",
                "dropped_late",
                "dropped_queue_full",
            )
        },
        **({"failed": failed} if failed else {}),
    }


# -- backend: sessions as Ray actors over the node's generator-service actor --------------------------
class TreeCpu:
    """CPU of this process and every descendant (Ray's GCS, raylet, workers), as % of all cores."""

    def __init__(self):
        import psutil

        self.me = psutil.Process()
        self.cpu0, self.wall0 = self._cpu(), time.monotonic()

    def _cpu(self) -> dict:
        import psutil

        out = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def percent(self) -> float:
        cpu1, wall = self._cpu(), max(1e-9, time.monotonic() - self.wall0)
        used = sum(v - self.cpu0.get(pid, 0.0) for pid, v in cpu1.items())  # new processes count from 0
        return 100 * used / wall / (os.cpu_count() or 1)


def run_ray(
    spec: dict, avatars: list[str], audio: str, seconds: float, stagger: bool, serve_batch_wait_ms: float | None = None
) -> dict:
    """`serve_batch_wait_ms` None: the per-node generator-service actor; a number: the generator
    as a Ray Serve deployment (the GPU-node layout) whose @serve.batch waits that long."""
    import functools

    import ray

    from models.errors import LipsyncError
    from realtime.config import EngineConfig
    from realtime.service.ray_backend import (
        GeneratorSpec,
        RaySessionHost,
        SessionPlacement,
        SessionSpec,
        init_local_ray,
    )

    n = len(avatars)
    if not ray.is_initialized():
        try:
            init_local_ray(num_cpus=2, log_to_driver=False)
        except LipsyncError as e:
            raise SystemExit(f"--backend ray: {e}") from None
    deployment = None
    if serve_batch_wait_ms is None:
        gen = GeneratorSpec(functools.partial(load_spec, spec), spec["checkpoint"], num_cpus=1.0)
    else:
        from ray import serve

        from realtime.service.serve_backend import ServeConfig, ServeTarget, generator_app

        serve.start(proxy_location="Disabled")
        scfg = ServeConfig(num_cpus=1.0, batch_wait_ms=serve_batch_wait_ms)
        deployment = serve.run(
            generator_app(functools.partial(load_spec, spec), spec["checkpoint"], EngineConfig(), scfg),
            name=scfg.app_name,
            route_prefix=None,
        )
        gen = ServeTarget(scfg.app_name, scfg.deployment_name)
    # The service actor (or replica) reserves one of Ray's 2 CPUs; the sessions share the other.
    host = RaySessionHost(gen, EngineConfig(), SessionPlacement(num_cpus=1.0 / n), stagger=stagger)
    actors = [
        host.add(SessionSpec(f"s{k}", path, functools.partial(rotated_source, audio, k, n), duration_s=seconds))
        for k, path in enumerate(avatars)
    ]
    ray.get([a.wait_frames.remote(1, 120) for a in actors], timeout=180)  # every actor up and streaming
    meter = TreeCpu()
    states = ray.get([a.wait.remote(seconds + 60) for a in actors], timeout=seconds + 120)
    cpu = meter.percent()
    out = host.close()
    svc = out["services"][0] if out["services"] else {}
    if deployment is not None:
        from ray import serve

        svc = deployment.summary.remote().result(timeout_s=60)
        serve.delete(gen.app_name)
    streams = []
    for k in range(n):
        s = out[f"s{k}"]
        streams.append({**per_stream(s), "actor_hop_ms": s.get("hop_ms"), "face_timeouts": s.get("face_timeouts")})
    hop_p95 = [
        s["actor_hop_ms"]["p95"] for s in streams if s.get("actor_hop_ms") and s["actor_hop_ms"]["p95"] is not None
    ]
    failed = {f"s{k}": out[f"s{k}"].get("error") for k in range(n) if out[f"s{k}"].get("error")}
    return {
        "streams": n,
        "backend": "ray" if deployment is None else "ray-serve",
        "stagger": stagger,
        "per_stream": streams,
        "cpu_percent": round(cpu, 1),
        "batch_size_mean": svc.get("batch_size_mean"),
        # round trip seen by a session minus the time spent inside the service actor
        "actor_hop_ms": {"p95_max_over_streams": max(hop_p95) if hop_p95 else None},
        "service": {
            k: svc.get(k)
            for k in (
                "batches",
                "batch_size_histogram",
                "decode_ms",
                "queue_wait_ms",
                "dropped_late",
                "dropped_queue_full",
            )
        },
        "session_states": states,
        **({"failed": failed} if failed else {}),
    }


# -- backend: one process per stream (the baseline) --------------------------------------------------
def stream_child(spec_path: str, avatar: str, audio: str, k: int, n: int, seconds: float) -> None:
    """One stream in this process with its own generator: 'ready' once loaded, then waits for a
    start time (monotonic ns, shared by all processes on Linux) on stdin, then one JSON line."""
    from realtime import threads
    from realtime.clock import MonotonicClock
    from realtime.config import EngineConfig
    from realtime.engine import Engine
    from realtime.renderer import Wav2LipRenderer
    from realtime.service import prepare_avatar
    from realtime.sinks.base import NullSink

    threads.apply(threads.plan("live"))
    spec = json.loads(Path(spec_path).read_text())
    gen = load_spec(spec)
    cfg = EngineConfig()
    av = prepare_avatar(avatar, gen, spec["checkpoint"], cfg)
    src = rotated_source(audio, k, n)
    print("ready", flush=True)
    start_ns = int(sys.stdin.readline())
    clock = MonotonicClock()
    engine = Engine(av, Wav2LipRenderer(gen, av, cfg.blend), [NullSink()], cfg, clock)
    clock.sleep_until_ns(start_ns)
    meter = CpuMeter()
    summary = engine.run(src, seconds)
    print(json.dumps({"summary": summary, "cpu_percent": meter.percent()}), flush=True)


def run_processes(spec_path: str, avatars: list[str], audio: str, seconds: float, stagger: bool) -> dict:
    n = len(avatars)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--_stream", spec_path, avatar, audio, str(k), str(n), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for k, avatar in enumerate(avatars)
    ]
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"a stream process failed to start (exit {p.wait()})")
    period = int(1e9 / FPS)
    t0 = time.monotonic_ns() + 200_000_000
    for k, p in enumerate(procs):
        p.stdin.write(f"{t0 + (k * period // n if stagger else 0)}\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise SystemExit(f"a stream process failed (exit {p.returncode})")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "streams": n,
        "backend": "processes",
        "stagger": stagger,
        "per_stream": [per_stream(o["summary"]) for o in outs],
        "cpu_percent": round(sum(o["cpu_percent"] for o in outs), 1),
        "batch_size_mean": 1.0,
    }


def line(r: dict) -> str:
    ps = r["per_stream"]
    fps = min(s["fps_sustained"] or 0 for s in ps)
    p99 = max(s["processing_latency_ms"]["p99"] or 0 for s in ps)
    hop = r.get("actor_hop_ms", {}).get("p95_max_over_streams")
    extra = f"  hop p95 {hop:5.1f} ms" if hop is not None else ""
    return (
        f"{r['backend']:>9}: fps min {fps:5.1f}  dropped {sum(s['dropped'] for s in ps):4d}  "
        f"p99 max {p99:6.1f} ms  cpu {r['cpu_percent']:5.1f}%  batch {r['batch_size_mean'] or 0:.2f}{extra}"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--_stream":
        a = sys.argv[2:]
        stream_child(a[0], a[1], a[2], int(a[3]), int(a[4]), float(a[5]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--_prepare":
        spec = prepare(sys.argv[2], sys.argv[3:])
        print(json.dumps(spec))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument(
        "--backend",
        default="inprocess",
        choices=["inprocess", "processes", "ray", "ray-serve"],
        help="ray: a local Ray, which refuses to start outside a loopback-only network namespace "
        "(unshare -n bash -c 'ip link set lo up; exec python benchmarks/bench_multistream.py ...'); "
        "ray-serve: the same with the generator as a Ray Serve deployment (the GPU-node layout)",
    )
    ap.add_argument("--serve-batch-wait-ms", type=float, default=5.0, help="ray-serve: @serve.batch's wait")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--avatar", default=str(ROOT / "media" / "avatar.jpg"))
    ap.add_argument("--audio", default=str(ROOT / "media" / "speech.mp3"))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--aligned", action="store_true", help="start every stream's clock at once (no stagger)")
    ap.add_argument("--json", default="bench-out/multistream.json")
    args = ap.parse_args()
    if min(args.streams) < 1:
        raise SystemExit(f"--streams: expected counts >= 1, found {min(args.streams)}; pass e.g. --streams 1 2 4")
    for flag, path in (("--avatar", args.avatar), ("--audio", args.audio), ("--checkpoint", args.checkpoint)):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"{flag}: expected an existing file, found {path!r}; check the path")

    from realtime import threads

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    ckpt, weights = args.checkpoint, "user checkpoint"
    if ckpt is None:
        ckpt, weights = standin_checkpoint(tmp.name)
    avatars = make_avatars(args.avatar, max(args.streams), Path(tmp.name) / "avatars")
    print(f"preparing decoder and {len(avatars)} avatars ...", file=sys.stderr)
    prep = subprocess.run(
        [sys.executable, __file__, "--_prepare", ckpt, *avatars], capture_output=True, text=True, cwd=ROOT
    )
    if prep.returncode != 0:
        raise SystemExit(f"preparation failed: {prep.stderr[-2000:]}")
    spec = json.loads(prep.stdout.strip().splitlines()[-1])
    spec_path = Path(tmp.name) / "spec.json"
    spec_path.write_text(json.dumps(spec))
    threads.apply(threads.plan("live"))
    stagger = not args.aligned
    runs = []
    for n in args.streams:
        print(f"[{n} streams] {args.seconds:g} s ...", file=sys.stderr)
        if args.backend in ("inprocess", "ray", "ray-serve"):
            if args.backend == "inprocess":
                r = run_inprocess(spec, avatars[:n], args.audio, args.seconds, stagger)
            else:
                r = run_ray(
                    spec,
                    avatars[:n],
                    args.audio,
                    args.seconds,
                    stagger,
                    args.serve_batch_wait_ms if args.backend == "ray-serve" else None,
                )
            r["baseline"] = run_processes(str(spec_path), avatars[:n], args.audio, args.seconds, stagger)
            print(f"N={n}  {line(r)}  |  {line(r['baseline'])}", flush=True)
        else:
            r = run_processes(str(spec_path), avatars[:n], args.audio, args.seconds, stagger)
            print(f"N={n}  {line(r)}", flush=True)
        runs.append(r)
    meta = {
        "seconds": args.seconds,
        "weights": weights,
        "generator": spec["generator"],
        "ladder": [ln.strip() for ln in spec["ladder"]],
        "cpus": os.cpu_count(),
        "audio": f"{Path(args.audio).name} looped from staggered points, paced in real time",
        "avatars": f"{Path(args.avatar).name}, mirrors and crops, one per stream",
    }
    doc = {**runs[0], **meta} if len(runs) == 1 else {**meta, "runs": runs}
    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live sessions as Ray actors over one generator-service actor per node (extra `ray`).

    driver: RaySessionHost.add(SessionSpec)  ->  SessionActor (placed by SessionPlacement's
            resources, restarted by Ray up to max_restarts)
    SessionActor: its own Engine, source and sinks, as a LiveSession; its renderer asks the
            generator-service actor of the node it landed on (named after the node, made by
            whichever session gets there first) for faces
    GeneratorServiceActor: a GeneratorService (earliest deadline first, batching, drops) and
            the avatars' face features, which never leave it

Nothing a session needs lives only in its process: a restarted actor rebuilds itself from its
spec, the avatar cache (face boxes) and the export cache (the service already holds the
features; registering again is a no-op), and starts streaming on its old phase of the frame
period. Deadlines cross the actor hop as CLOCK_MONOTONIC nanoseconds, which every process of
one machine shares: that is why a session only ever talks to its own node's service.

What the hop costs is measured per frame: the round trip seen by the session minus the time the
request spent inside the service actor (queue + decode), kept as `hop_ms` in each session's
summary.

Ray on one machine must run inside a network namespace that has only loopback (see
init_local_ray): a local Ray otherwise binds and advertises the machine's public address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import EngineFailure, LipsyncError
from realtime import heap, threads
from realtime.avatar import AvatarConfig, load_avatar
from realtime.clock import MonotonicClock
from realtime.compositor import to_uint8_faces
from realtime.config import EngineConfig
from realtime.engine import Engine
from realtime.service.generator_service import DROPPED, GeneratorService, ServiceConfig
from realtime.service.remote_renderer import RemoteFaceRenderer
from realtime.service.serve_backend import ServeTarget, avatar_key, make_serve_renderer
from realtime.service.sessions import LiveSession, prepare_avatar, van_der_corput
from realtime.stats import rss_mb

log = logging.getLogger(__name__)

NAMESPACE = "lipsync"
SERVICE_PREFIX = "lipsync-generator-"
SESSION_PREFIX = "lipsync-session-"


@dataclass(frozen=True)
class GeneratorSpec:
    """How a node's service actor makes its decoder: `make_generator()` -> a split generator
    (pickled to the node; it loads from the export cache there). `checkpoint_id` keys the
    avatars' feature cache."""

    make_generator: Callable[[], object]
    checkpoint_id: str
    service: ServiceConfig = ServiceConfig()
    num_cpus: float = 1.0  # reserved for the service actor on each node
    warm_batches: int = 4  # batch sizes 2..this run once when the first avatar registers
    face_size: int = 96  # the generator's face size (an HD checkpoint's is larger): sessions crop at it


@dataclass(frozen=True)
class SessionPlacement:
    """Where Ray may put a session actor and how it comes back. `resources`: custom node
    resources, e.g. (("lipsync_slot", 1.0),) with nodes started as --resources='{"lipsync_slot": 8}'."""

    num_cpus: float = 0.5
    memory_bytes: int | None = None
    resources: tuple[tuple[str, float], ...] = ()
    max_restarts: int = -1  # -1: restart every time it dies


@dataclass(frozen=True)
class SessionSpec:
    """Everything a session actor rebuilds itself from. `make_source()` and `make_sinks()` run
    in the actor (sources and sinks hold threads, sockets, devices: they are made where they
    run, again after a restart)."""

    session_id: str
    avatar_path: str
    make_source: Callable[[], object]
    make_sinks: Callable[[], list] = list
    duration_s: float | None = None
    loop: str = "forward"
    avatar_id: str | None = None  # sessions on one avatar may share its features
    phase_ns: int = 0  # offset of this stream's frames within the frame period (stagger)
    epoch_ns: int = 0  # CLOCK_MONOTONIC origin of the phases


def service_name(node_id: str) -> str:
    return SERVICE_PREFIX + node_id


# -- network guard ----------------------------------------------------------------------------------
def loopback_only() -> bool:
    """True inside a network namespace whose only interface is `lo` (asked of the kernel:
    /sys/class/net shows the namespace sysfs was mounted in, not this process's)."""
    return interfaces() == ["lo"]


def interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


def init_local_ray(num_cpus: int = 2, **kwargs) -> None:
    """Start a one-machine Ray for tests and benchmarks, refusing where it would bind the
    machine's public interfaces. The worker processes find this checkout's packages."""
    import ray  # ray: an optional extra; importing this module needs none

    if not loopback_only():
        raise LipsyncError(
            "local Ray",
            "a network namespace with only loopback",
            f"interfaces {interfaces()}",
            "run it as root inside `unshare -n bash -c 'ip link set lo up; exec <command>'`, "
            "or connect to a real cluster with ray.init(address=...)",
        )
    root = str(Path(__file__).resolve().parents[2])
    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)  # the raylet and its workers inherit it
    ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE, **kwargs)


# -- the node's generator service -----------------------------------------------------------------
class GeneratorServiceActor:
    """One per node (async actor: every session's request waits as a coroutine, the service's
    own thread decodes)."""

    def __init__(self, spec: GeneratorSpec, cfg: EngineConfig):
        threads.apply(threads.plan("live"))
        self.spec, self.cfg = spec, cfg
        self.gen = spec.make_generator()
        self.svc = GeneratorService(self.gen, spec.service).start()
        self._avatars: dict[str, str] = {}  # avatar id -> path
        self._holders: dict[str, set[str]] = {}  # avatar id -> the sessions using it
        self._warm = False
        self._lock = threading.Lock()

    def _register(self, avatar_id: str, path: str, loop: str, session: str) -> dict:
        with self._lock:
            if self._avatars.get(avatar_id) not in (None, path):
                raise ValueError(f"avatar id {avatar_id!r} is registered with {self._avatars[avatar_id]}, not {path}")
            if avatar_id not in self._avatars:
                av = prepare_avatar(path, self.gen, self.spec.checkpoint_id, self.cfg, loop)
                self.svc.register_avatar(avatar_id, av)
                self._avatars[avatar_id] = path
                if not self._warm:
                    self.svc.warm_up(range(2, self.spec.warm_batches + 1))
                    self._warm = True
            self._holders.setdefault(avatar_id, set()).add(session)
        return {"generator": self.gen.name, "first_row": getattr(self.gen, "first_row", 0), "pid": os.getpid()}

    async def register(self, avatar_id: str, path: str, loop: str = "forward", session: str | None = None) -> dict:
        """Idempotent: a restarted session registers again and finds its features here."""
        return await asyncio.to_thread(self._register, avatar_id, path, loop, session or avatar_id)

    def release(self, session: str) -> list[str]:
        """A session that ended (its actor killed): its queued requests are dropped, and an
        avatar no other session uses leaves, features and all. The avatar ids let go."""
        self.svc.cancel_session(session)
        gone = []
        with self._lock:
            for avatar_id, holders in list(self._holders.items()):
                holders.discard(session)
                if not holders:
                    del self._holders[avatar_id]
                    self._avatars.pop(avatar_id, None)
                    self.svc.unregister_avatar(avatar_id)
                    gone.append(avatar_id)
        if gone:
            heap.release_freed()  # the features' memory back to the system, not kept by glibc
        return gone

    def avatars(self) -> list[str]:
        with self._lock:
            return sorted(self._avatars)

    async def face(self, avatar_id: str, idx: int, mel: np.ndarray, deadline_ns: int | None, session: str):
        """(face as (rows, 96, 3) uint8 or None for a drop, ns spent in this actor)."""
        t0 = time.monotonic_ns()
        fut = self.svc.submit(avatar_id, idx, mel, deadline_ns, session)
        try:
            out = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:  # the session gave up: wrap_future cancelled `fut`, never decoded
            raise
        if out is DROPPED:
            return None, time.monotonic_ns() - t0
        return to_uint8_faces(out)[0], time.monotonic_ns() - t0

    def cancel_session(self, session: str) -> None:
        self.svc.cancel_session(session)

    def summary(self) -> dict:
        return {**self.svc.summary(), "cpu_s": time.process_time(), "pid": os.getpid(), "rss_mb": round(rss_mb(), 1)}


def node_service(spec: GeneratorSpec, cfg: EngineConfig):
    """The generator-service actor of the node this process runs on: made here if no session
    of this node made it yet. Detached, so it outlives the session that happened to create it
    (RaySessionHost.close() ends it)."""
    import ray  # ray: an optional extra; importing this module needs none
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return (
        ray.remote(GeneratorServiceActor)
        .options(
            name=service_name(node),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=spec.num_cpus,
            max_restarts=-1,
            max_concurrency=1000,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
        )
        .remote(spec, cfg)
    )


# -- sessions -------------------------------------------------------------------------------------
def make_renderer(
    service, avatar_id: str, avatar, blend: str, session: str, grace_ms: float, no_deadline_wait_s: float
):
    """Faces from the node's service actor (RemoteFaceRenderer's bounds); deadlines cross as
    CLOCK_MONOTONIC ns, which one machine shares. (Made here so that importing this module needs
    no Ray.)"""
    import ray  # ray: an optional extra; importing this module needs none
    from ray.exceptions import RayActorError

    class RayServiceRenderer(RemoteFaceRenderer):
        service_name = "generator service actor"

        def _ask(self, idx, mel, deadline_ns, now_ns):
            return service.face.remote(avatar_id, idx, mel, deadline_ns, session)

        def _answer(self, ref, timeout_s):
            try:
                return ray.get(ref, timeout=timeout_s)  # GetTimeoutError is a TimeoutError
            except RayActorError as e:
                raise EngineFailure.wrap("the node's generator service actor", e) from e

        def _cancel(self, ref):
            ray.cancel(ref)

    return RayServiceRenderer(avatar, blend, "ray-service", grace_ms, no_deadline_wait_s)


class _Tally:
    """A sink that only counts: lets the driver wait for frames without sleeping."""

    name = "tally"

    def __init__(self):
        self.frames = 0
        self.first_ns: int | None = None
        self.over = False
        self._cv = threading.Condition()

    def send_video(self, frame) -> None:
        with self._cv:
            if self.first_ns is None:
                self.first_ns = time.monotonic_ns()
            self.frames += 1
            self._cv.notify_all()

    def send_audio(self, chunk) -> None:
        pass

    def close(self) -> None:
        pass

    def ended(self, _session=None) -> None:
        with self._cv:
            self.over = True
            self._cv.notify_all()

    def wait_for(self, n: int, timeout_s: float) -> int:
        """Frames so far, once there are `n`, the session ended, or at the timeout."""
        with self._cv:
            self._cv.wait_for(lambda: self.frames >= n or self.over, timeout_s)
            return self.frames


@dataclass(frozen=True)
class WaitSettings:
    grace_ms: float = 100.0
    no_deadline_wait_s: float = 60.0


def _process_start_ns() -> int | None:
    """CLOCK_MONOTONIC ns when this process started (Linux: /proc/self/stat field 22, in clock
    ticks since boot, which is what CLOCK_MONOTONIC counts from too, suspends aside)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class SessionActor:
    """One live session in its own Ray worker process (a threaded actor: the engine runs on its
    own threads; the methods here only look at it)."""

    def __init__(self, spec: SessionSpec, gen: GeneratorSpec, cfg: EngineConfig, wait: WaitSettings):
        import ray  # ray: an optional extra; importing this module needs none

        t0 = self.init_ns = time.monotonic_ns()
        self.spec = spec
        self.incarnation = "restarted" if ray.get_runtime_context().was_current_actor_reconstructed else "first"
        avatar = load_avatar(  # boxes: avatar cache
            AvatarConfig(spec.avatar_path, loop=spec.loop, fps=cfg.fps, face_size=gen.face_size)
        )
        if isinstance(gen, ServeTarget):  # the generator is a Serve deployment (GPU nodes)
            self.renderer = make_serve_renderer(
                gen,
                avatar_key(spec.avatar_path, spec.loop),
                avatar,
                cfg.blend,
                spec.session_id,
                wait.no_deadline_wait_s,
            )
            self.renderer.load()
        else:
            avatar_id = spec.avatar_id or spec.session_id
            self.service = node_service(gen, cfg)
            ray.get(self.service.register.remote(avatar_id, spec.avatar_path, spec.loop, spec.session_id))
            self.renderer = make_renderer(
                self.service, avatar_id, avatar, cfg.blend, spec.session_id, wait.grace_ms, wait.no_deadline_wait_s
            )
        self.tally = _Tally()
        clock = MonotonicClock()
        engine = Engine(avatar, self.renderer, [*spec.make_sinks(), self.tally], cfg, clock)
        period = int(1e9 / cfg.fps)
        now = clock.now_ns()
        start_at = now + (spec.epoch_ns + spec.phase_ns - now) % period  # the same phase after a restart
        self.session = LiveSession(
            spec.session_id, engine, spec.make_source(), spec.duration_s, start_at, on_end=self.tally.ended
        )
        self.session.start()
        self.ready_ms = (time.monotonic_ns() - t0) / 1e6
        log.info("session %s (%s incarnation) ready in %.0f ms", spec.session_id, self.incarnation, self.ready_ms)

    def info(self) -> dict:
        import ray  # ray: an optional extra; importing this module needs none

        return {
            "session": self.spec.session_id,
            "pid": os.getpid(),
            "incarnation": self.incarnation,
            "node": ray.get_runtime_context().get_node_id(),
            "ready_ms": round(self.ready_ms, 1),
            "init_ns": self.init_ns,
            "process_started_ns": _process_start_ns(),
        }

    def wait_frames(self, n: int, timeout_s: float) -> dict:
        """Frames this incarnation delivered, once there are `n` (or at the timeout), and when
        its first one was delivered (CLOCK_MONOTONIC ns)."""
        frames = self.tally.wait_for(n, timeout_s)
        return {
            "frames": frames,
            "first_frame_ns": self.tally.first_ns,
            "pid": os.getpid(),
            "state": self.session.state,
        }

    def wait(self, timeout_s: float) -> str:
        self.session.wait(timeout_s)
        return self.session.state

    def stop(self, timeout_s: float = 10.0) -> dict:
        self.session.stop()
        self.session.wait(timeout_s)
        return self.summary()

    def summary(self) -> dict:
        a = np.asarray(self.renderer.hop_ms, np.float64)
        pct = (
            {k: round(float(np.percentile(a, q)), 3) for k, q in (("p50", 50), ("p95", 95), ("p99", 99))}
            if len(a)
            else {"p50": None, "p95": None, "p99": None}
        )
        s = self.session.summary or self.session.engine.stats.summary()
        return {
            **s,
            "hop_ms": pct,
            "hop_samples": int(len(a)),
            "face_timeouts": self.renderer.timeouts,
            "state": self.session.state,
            "error": None if self.session.error is None else str(self.session.error),
            "cpu_s": time.process_time(),
            "pid": os.getpid(),
            "incarnation": self.incarnation,
        }


@dataclass
class RaySessionHost:
    """The driver's side: starts session actors (staggered phases), kills and stops them, and
    ends the node services it caused. Call init_local_ray (or ray.init) first."""

    gen: GeneratorSpec | ServeTarget  # a per-node service actor, or a Serve deployment (GPU nodes)
    cfg: EngineConfig = EngineConfig()
    placement: SessionPlacement = SessionPlacement()
    wait: WaitSettings = WaitSettings()
    stagger: bool = True
    actors: dict = field(default_factory=dict)

    def __post_init__(self):
        self._epoch_ns = time.monotonic_ns()
        self._slots = 0

    def add(self, spec: SessionSpec):
        import ray  # ray: an optional extra; importing this module needs none

        if spec.session_id in self.actors:
            raise ValueError(f"session {spec.session_id!r} is already running")
        period = int(1e9 / self.cfg.fps)
        phase = int(van_der_corput(self._slots) * period) if self.stagger else 0
        self._slots += 1
        spec = dataclasses.replace(spec, phase_ns=phase, epoch_ns=self._epoch_ns)
        p = self.placement
        opts = {
            "num_cpus": p.num_cpus,
            "max_restarts": p.max_restarts,
            "max_task_retries": -1,
            "max_concurrency": 8,
            # Numbered: a killed actor's name is freed asynchronously, and the same session id
            # started again at once must not find its old actor's name taken.
            "name": f"{SESSION_PREFIX}{spec.session_id}-{self._slots}",
            "namespace": NAMESPACE,
        }
        if p.memory_bytes:
            opts["memory"] = p.memory_bytes
        if p.resources:
            opts["resources"] = dict(p.resources)
        actor = ray.remote(SessionActor).options(**opts).remote(spec, self.gen, self.cfg, self.wait)
        self.actors[spec.session_id] = actor
        return actor

    def kill(self, session_id: str, restart: bool = True) -> None:
        """Kill the session's process (as a crash would); Ray brings it back unless restart=False."""
        import ray  # ray: an optional extra; importing this module needs none

        ray.kill(self.actors[session_id], no_restart=not restart)

    def stop(self, session_id: str, timeout_s: float = 30.0) -> dict:
        """The session's last figures; its actor is killed and its avatar released on the node
        services whatever happens (a stop that times out or fails included), and the actor
        stays in `actors` until it is killed."""
        import ray  # ray: an optional extra; importing this module needs none

        actor = self.actors[session_id]
        try:
            return ray.get(actor.stop.remote(), timeout=timeout_s)
        finally:
            try:
                ray.kill(actor, no_restart=True)
                self.actors.pop(session_id, None)
            finally:
                self._release(session_id, timeout_s)

    def _release(self, session_id: str, timeout_s: float) -> None:
        """Let the node services drop what they held for the session (GeneratorServiceActor.release)."""
        import ray  # ray: an optional extra; importing this module needs none

        if isinstance(self.gen, ServeTarget):
            return  # Serve replicas keep avatars by key (LRU), not by session
        try:
            ray.get([s.release.remote(session_id) for s in self.services()], timeout=timeout_s)
        except Exception as e:  # a service restarting: it comes back without the avatar anyway
            log.warning("session %s: the node services did not release its avatar: %s", session_id, e)

    def services(self) -> list:
        import ray  # ray: an optional extra; importing this module needs none

        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if isinstance(a, dict) and a.get("namespace") == NAMESPACE and a["name"].startswith(SERVICE_PREFIX)
        ]
        return [ray.get_actor(n, namespace=NAMESPACE) for n in names]

    def close(self, timeout_s: float = 30.0) -> dict:
        """Stop every session, then the node services; summaries by session id (and the
        services' under "services"). Every actor is killed, whichever of them fail to report."""
        import ray  # ray: an optional extra; importing this module needs none

        out: dict = {}
        try:
            refs = {sid: a.stop.remote() for sid, a in self.actors.items()}
            for sid, ref in refs.items():
                try:
                    out[sid] = ray.get(ref, timeout=timeout_s)
                except Exception as e:  # one session that cannot report does not keep the others' figures
                    out[sid] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for sid, a in list(self.actors.items()):
                try:
                    ray.kill(a, no_restart=True)
                    del self.actors[sid]
                except Exception as e:
                    log.warning("session %s: its actor could not be killed: %s", sid, e)
        services = self.services()
        try:
            out["services"] = []
            for s in services:
                try:
                    out["services"].append(ray.get(s.summary.remote(), timeout=timeout_s))
                except Exception as e:
                    out["services"].append({"error": f"{type(e).__name__}: {e}"})
        finally:
            for s in services:
                try:
                    ray.kill(s, no_restart=True)
                except Exception as e:
                    log.warning("a node service could not be killed: %s", e)
        return out

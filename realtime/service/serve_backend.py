"""The generator as a Ray Serve deployment, for GPU nodes (extra `ray`).

    session actor (ray_backend.SessionActor, any node)
        -> handle.options(multiplexed_model_id=<avatar key>).face.remote(idx, mel, budget)
    GeneratorDeployment replica (num_gpus=1 on a GPU node)
        @serve.multiplexed: the avatar's face features are made (or read from the export
            cache) on the replica the avatar is routed to, and stay there: Serve routes every
            later request with that avatar key to a replica that already holds it
        @serve.batch: requests from every session on the replica, gathered for at most
            batch_wait_ms, decoded as one batch by a GeneratorService (earliest deadline first,
            drops past the deadline, fairness, per-batch stats)

Why Serve only on GPU nodes: a Serve call costs several CPU-ms per frame (router, replica
queue, asyncio hops) on top of a plain actor call; on a CPU node that eats the frame budget the
model needed, and batching buys little when the cores are the bottleneck. On a GPU a batch of 8
costs little more than a batch of 1, so waiting a few ms to fill one pays.

Deadlines cross the hop as a budget (ns left), not as a clock reading: the session and the
replica may be on different machines, whose monotonic clocks share nothing. The replica's
deadline is its arrival time plus the budget; transit before arrival is not known, and the
session's own wait (deadline + grace) bounds what that misses. A request whose budget is shorter
than the batch wait plus one decode is not made to wait for company: it is decoded at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass

import numpy as np

from models.errors import EngineFailure
from realtime import threads
from realtime.compositor import to_uint8_faces
from realtime.config import EngineConfig
from realtime.service.generator_service import DROPPED, GeneratorService, ServiceConfig
from realtime.service.remote_renderer import RemoteFaceRenderer
from realtime.service.sessions import prepare_avatar


@dataclass(frozen=True)
class ServeConfig:
    app_name: str = "lipsync"
    deployment_name: str = "LipsyncGenerator"
    num_replicas: int = 1
    num_gpus: float = 0.0  # 1.0 on GPU nodes; 0 lets tests run the same code on CPU
    num_cpus: float = 1.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0  # longest a request waits for others to share its batch
    decode_ms: float = 15.0  # one batch's expected decode: below wait + this, no waiting
    avatars_per_replica: int = 16  # features held per replica (LRU beyond: unregistered, re-read later)
    max_ongoing_requests: int = 128


@dataclass(frozen=True)
class ServeTarget:
    """Where session actors find the deployment (what RaySessionHost takes instead of a
    GeneratorSpec when the generator runs on Serve)."""

    app_name: str = "lipsync"
    deployment_name: str = "LipsyncGenerator"
    grace_ms: float = 100.0
    face_size: int = 96  # the deployment's generator's face size: sessions crop at it


def avatar_key(path: str, loop: str = "forward") -> str:
    """The multiplexed model id of an avatar: its path (on storage every node sees) and loop mode."""
    return json.dumps([os.path.abspath(path), loop])


class _HeldAvatar:
    """What the multiplexed loader returns: Serve calls __del__ when it evicts the avatar, and
    the service then forgets its features (queued requests for it resolve to drops). Only the
    very avatar this holder loaded: the key may have been loaded again since (evicted, then
    asked for again), and a late finaliser must not take the new load's features away."""

    def __init__(self, key: str, service: GeneratorService, avatar):
        self.key, self.service, self.avatar = key, service, avatar

    def __del__(self):
        self.service.unregister_avatar(self.key, self.avatar)


def generator_app(
    make_generator, checkpoint_id: str, cfg: EngineConfig = EngineConfig(), serve_cfg: ServeConfig = ServeConfig()
):
    """A Serve application running the generator: `serve.run(generator_app(...),
    name=serve_cfg.app_name, route_prefix=None)`. `make_generator()` runs on each replica (it
    loads the decoder from the export cache there)."""
    from ray import serve  # ray: an optional extra; importing this module needs none

    # Serve's decorators take their sizes when the class is made, so it is made here, per config.
    @serve.deployment(
        name=serve_cfg.deployment_name,
        num_replicas=serve_cfg.num_replicas,
        ray_actor_options={"num_gpus": serve_cfg.num_gpus, "num_cpus": serve_cfg.num_cpus},
        max_ongoing_requests=serve_cfg.max_ongoing_requests,
    )
    class GeneratorDeployment:
        def __init__(self):
            threads.apply(threads.plan("live"))
            self.gen = make_generator()
            # The service decodes what the Serve batch hands it, all at once (never waits itself).
            self.svc = GeneratorService(self.gen, ServiceConfig(max_batch=serve_cfg.max_batch)).start()
            self.urgent_ns = int((serve_cfg.batch_wait_ms + serve_cfg.decode_ms) * 1e6)
            self.loads = 0

        @serve.multiplexed(max_num_models_per_replica=serve_cfg.avatars_per_replica)
        async def _avatar(self, key: str) -> _HeldAvatar:
            path, loop = json.loads(key)
            av = await asyncio.to_thread(prepare_avatar, path, self.gen, checkpoint_id, cfg, loop)
            self.svc.register_avatar(key, av, replace=True)  # a reload takes over from an evicted load
            if self.loads == 0:  # batch sizes compile on the first avatar, before any session waits on one
                await asyncio.to_thread(self.svc.warm_up, range(2, serve_cfg.max_batch + 1))
            self.loads += 1
            return _HeldAvatar(key, self.svc, av)

        async def load(self) -> dict:
            """Make sure this request's avatar is held here (a session calls it before streaming)."""
            held = await self._avatar(serve.get_multiplexed_model_id())
            return {
                "avatar": held.key,
                "generator": self.gen.name,
                "pid": os.getpid(),
                "replica": serve.get_replica_context().replica_id.unique_id,
            }

        async def face(self, idx: int, mel: np.ndarray, budget_ns: int | None, session: str):
            """(face as (rows, 96, 3) uint8, or None for a drop; ns spent in this replica)."""
            t0 = time.monotonic_ns()
            held = await self._avatar(serve.get_multiplexed_model_id())
            deadline = None if budget_ns is None else t0 + int(budget_ns)
            req = (held.key, int(idx), mel, deadline, session)
            if deadline is not None and deadline - time.monotonic_ns() < self.urgent_ns:
                out = _to_u8(await asyncio.wrap_future(self.svc.submit(*req)))
            else:
                out = await self._batched(req)
            return out, time.monotonic_ns() - t0

        @serve.batch(max_batch_size=serve_cfg.max_batch, batch_wait_timeout_s=serve_cfg.batch_wait_ms / 1000)
        async def _batched(self, reqs: list) -> list:
            futures = self.svc.submit_many(reqs)
            outs = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
            return [o if isinstance(o, BaseException) else _to_u8(o) for o in outs]

        def summary(self) -> dict:
            return {
                **self.svc.summary(),
                "pid": os.getpid(),
                "cpu_s": time.process_time(),
                "avatars_loaded": self.loads,
            }

    return GeneratorDeployment.bind()


def _to_u8(out):
    return None if out is DROPPED else to_uint8_faces(out)[0]


def make_serve_renderer(target: ServeTarget, key: str, avatar, blend: str, session: str, no_deadline_wait_s: float):
    """The session side: faces from the deployment, routed by avatar key, with
    RemoteFaceRenderer's bounds; the deadline crosses as a budget (ns left)."""
    from ray import serve  # ray: an optional extra; importing this module needs none
    from ray.exceptions import RayActorError

    handle = serve.get_deployment_handle(target.deployment_name, app_name=target.app_name)
    routed = handle.options(multiplexed_model_id=key)

    class ServeRenderer(RemoteFaceRenderer):
        service_name = "generator deployment"

        def load(self) -> dict:
            return routed.load.remote().result(timeout_s=600)

        def _ask(self, idx, mel, deadline_ns, now_ns):
            budget = None if deadline_ns is None else max(0, deadline_ns - now_ns)
            return routed.face.remote(idx, mel, budget, session)

        def _answer(self, resp, timeout_s):
            try:
                return resp.result(timeout_s=timeout_s)
            except RayActorError as e:
                raise EngineFailure.wrap("the generator deployment", e) from e

        def _cancel(self, resp):
            resp.cancel()

    return ServeRenderer(avatar, blend, "ray-serve", target.grace_ms, no_deadline_wait_s)

"""Fire-and-forget coroutines on the server's event loop, kept alive until they finish.

asyncio holds only a weak reference to a task: one nobody else references can be collected
mid-flight (its `finally` never runs, a peer connection never closes). `spawn` keeps each task
in a set until it is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine

log = logging.getLogger(__name__)

_running: set[asyncio.Task] = set()


def spawn(coro: Coroutine) -> asyncio.Task:
    """Run `coro` as a task on the running loop, referenced until it ends; a failure is logged."""
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task %s failed: %s", task.get_coro(), task.exception())

"""ServiceRenderer's contract over a process hop (a Ray actor, a Ray Serve deployment): the wait
for a face is bounded by the frame's deadline plus grace (past it: a drop, the request cancelled),
with no deadline by a long bound (past it: the session fails), and what the hop itself cost is kept
per frame (`hop_ms`: the round trip minus the time the request spent inside the service)."""

from __future__ import annotations

import collections
import time

import numpy as np

from models.errors import EngineFailure
from realtime.renderer import FrameDropped, Wav2LipRenderer


class RemoteFaceRenderer(Wav2LipRenderer):
    """Subclasses say how to ask (`_ask`), how to wait for the answer (`_answer`, raising
    TimeoutError when `timeout_s` passes, EngineFailure when the service is gone) and how to
    take a question back (`_cancel`)."""

    wants_deadline = True  # the engine sets deadline_ns before each render
    service_name = "generator service"

    def __init__(self, avatar, blend: str, name: str, grace_ms: float, no_deadline_wait_s: float):
        super().__init__(None, avatar, blend)
        self.name = name
        self.grace_ms, self.no_deadline_wait_s = grace_ms, no_deadline_wait_s
        self.deadline_ns: int | None = None
        self.hop_ms: collections.deque = collections.deque(maxlen=8192)
        self.timeouts = 0  # faces given up on past deadline + grace (also counted as drops)

    def _ask(self, idx: int, mel: np.ndarray, deadline_ns: int | None, now_ns: int):
        raise NotImplementedError

    def _answer(self, request, timeout_s: float):
        raise NotImplementedError

    def _cancel(self, request) -> None:
        raise NotImplementedError

    def face_u8(self, idx: int, mel_window: np.ndarray) -> np.ndarray:
        t0 = time.monotonic_ns()
        request = self._ask(idx, np.ascontiguousarray(mel_window, np.float32), self.deadline_ns, t0)
        if self.deadline_ns is None:
            timeout_s = self.no_deadline_wait_s
        else:
            timeout_s = max(0, self.deadline_ns - t0) / 1e9 + self.grace_ms / 1000
        try:
            out, inside_ns = self._answer(request, timeout_s)
        except TimeoutError:
            self._cancel(request)  # the service withdraws it if still queued
            if self.deadline_ns is None:
                raise EngineFailure(f"{self.service_name}: no answer within {timeout_s:g} s") from None
            self.timeouts += 1
            raise FrameDropped(f"no face for avatar frame {idx} by its deadline + {self.grace_ms:g} ms") from None
        self.hop_ms.append((time.monotonic_ns() - t0 - inside_ns) / 1e6)
        if out is None:
            raise FrameDropped(f"frame of avatar frame {idx} dropped past its deadline")
        return out

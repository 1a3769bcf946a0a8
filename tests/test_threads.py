"""LIPSYNC_INFERENCE_THREADS: the runtime's thread count set from outside, checked at the start."""

import pytest

from export.machine import cores
from models.errors import LipsyncError
from realtime import threads


def test_inference_threads_follow_the_environment(monkeypatch):
    monkeypatch.delenv(threads.INFERENCE_THREADS_ENV, raising=False)
    assert threads.plan("live").inference_threads == cores()
    monkeypatch.setenv(threads.INFERENCE_THREADS_ENV, "1")
    assert threads.plan("live").inference_threads == 1
    assert threads.plan("offline").inference_threads == 1


@pytest.mark.parametrize("bad", ["0", "two", "-1", "1.5", str(10_000)])
def test_a_bad_inference_thread_count_is_one_clear_error(monkeypatch, bad):
    monkeypatch.setenv(threads.INFERENCE_THREADS_ENV, bad)
    with pytest.raises(LipsyncError, match=f"expected a whole number from 1 to {cores()}.*found '{bad}'"):
        threads.plan("live")

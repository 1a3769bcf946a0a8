"""The export and the precision ladder in a child process, so that a live process never holds them.

Exporting imports torch and the int8 builds import NNCF (which imports torch too): hundreds of
MB that a live process would keep for the rest of its run (freed memory stays with the
allocator), with the ladder's own peaks on top. Their results are files in the export cache, so
a child process makes them and the live process reads them, exactly as on a warm start. What
needs neither torch nor a build (a recorded choice, or the check of an earlier choice on a new
avatar: `export.precision.lookup`) runs in the calling process, without a child.

The child is `python -c` importing this module from where this process imports it (never the
working folder's). The request goes in pickled on its stdin; answers come back on its stdout as
length-prefixed pickles, while the child's own file descriptor 1 is pointed at stderr, so that
nothing a library prints can corrupt them:
  ("log", fields of a LogRecord)   each message the ladder logs, re-logged here by its logger
  ("done", Choice)                 the result
  ("error", LipsyncError fields)   a user-fixable problem: raised here as the same one line
  ("crash", traceback text)        a bug
The child ignores SIGINT (Ctrl-C reaches the whole process group): the parent decides, and kills
it on Ctrl-C, on `cancel`, or on any error of its own; it also dies with its parent (Linux).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import traceback
from pathlib import Path

from export import precision
from export.cache import checkpoint_sha256, ensure_exported, exported
from export.precision import AvatarSamples, Choice
from models.errors import LipsyncError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")
POLL_S = 0.2  # how often a waiting parent looks at `cancel`
LOGGED = ("export", "models")  # the packages whose code runs in the child


class LadderCancelled(Exception):
    """The caller cancelled the start while the child was exporting or laddering."""


class LadderCrashed(RuntimeError):
    """The child failed with a bug (not a user-fixable problem); its traceback is the message."""


def choose(
    checkpoint,
    cfg,
    first_row: int = 0,
    avatar: AvatarSamples | None = None,
    cancel: threading.Event | None = None,
) -> Choice:
    """`export.precision.choose`, with whatever needs torch or NNCF done in a child process."""
    got = precision.lookup(checkpoint, cfg, first_row, avatar)
    if got is not None:
        return got
    request = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "cfg": cfg,
        "first_row": first_row,
        "avatar": avatar,
        # The child logs what this process would: its own packages at their levels here, any
        # other library at WARNING and above.
        "log_levels": {name: logging.getLogger(name).getEffectiveLevel() for name in LOGGED},
    }
    return _run_child(request, cancel)


def face_encoder(checkpoint, cfg, cancel: threading.Event | None = None) -> Path:
    """The checkpoint's verified fp32 face encoder graph (what tells the model's face size): read
    from the cache, else exported in a child process, like the ladder's exports."""
    got = exported(checkpoint_sha256(checkpoint, cfg.face_size_px), "encoder", "fp32")
    if got is not None:
        return got["face_encoder"]
    request = {
        "task": "encoder",
        "checkpoint": str(Path(checkpoint).resolve()),
        "cfg": cfg,
        "log_levels": {name: logging.getLogger(name).getEffectiveLevel() for name in LOGGED},
    }
    return _run_child(request, cancel)


def _run_child(request: dict, cancel: threading.Event | None):
    root = Path(__file__).resolve().parent.parent  # the folder this `export` package is in
    code = f"import sys; sys.path.insert(0, {str(root)!r}); from export.ladder_process import child_main; child_main()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    log.debug("exporting and laddering in process %d", proc.pid)
    result: Choice | None = None
    try:
        proc.stdin.write(pickle.dumps(request))
        proc.stdin.close()
        while True:
            if cancel is not None and cancel.is_set():
                raise LadderCancelled("cancelled while choosing the generator's precision")
            ready, _, _ = select.select([proc.stdout], [], [], POLL_S)
            if not ready:
                continue
            msg = _receive(proc.stdout)
            if msg is None:
                break
            kind, body = msg
            if kind == "log":
                logging.getLogger(body["name"]).handle(logging.makeLogRecord(body))
            elif kind == "done":
                result = body  # the child exits right after: read on to its end
            elif kind == "error":
                raise LipsyncError(*body)
            else:
                raise LadderCrashed(f"the precision ladder's process failed:\n{body}")
        if result is not None:  # everything it made was in place before it answered
            return result
        code_ = proc.wait(timeout=30)  # its output has ended: it is exiting
        how = f"was killed by signal {-code_}" if code_ < 0 else f"exited with code {code_}"
        raise LipsyncError(
            "exporting and choosing the precision",
            "its process to finish with an answer",
            f"it {how} before answering",
            "a kill is most often the system out of memory: close other programs and start again, or pin "
            "--runtime onnxruntime --precision fp32 (no int8 builds)",
        )
    finally:
        if proc.poll() is None:  # Ctrl-C, a cancel or an error here: the child goes too
            proc.kill()
        proc.wait()


def _receive(f) -> tuple | None:
    head = _read_exactly(f, _HEADER.size)
    if head is None:
        return None
    body = _read_exactly(f, _HEADER.unpack(head)[0])
    return None if body is None else pickle.loads(body)


def _read_exactly(f, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# -- the child --------------------------------------------------------------------------------------
class _Sender:
    def __init__(self, f):
        self._f, self._lock = f, threading.Lock()

    def __call__(self, msg: tuple) -> None:
        data = pickle.dumps(msg)
        with self._lock:  # NNCF and the runtimes may log from threads of their own
            self._f.write(_HEADER.pack(len(data)) + data)


class _Forward(logging.Handler):
    """Sends each record to the parent, formatted, with nothing that might not pickle."""

    def __init__(self, send: _Sender):
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"], fields["args"] = record.getMessage(), None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            self._send(("log", fields))
        except Exception:  # a lost log line must not end the ladder
            self.handleError(record)


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, however the parent died."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the parent kills it on every exit it sees
        pass


def child_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    send = _Sender(os.fdopen(os.dup(1), "wb", buffering=0))
    os.dup2(2, 1)  # from here, fd 1 is stderr: prints from any library cannot reach the answers
    request = pickle.load(sys.stdin.buffer)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for name, level in request["log_levels"].items():
        logging.getLogger(name).setLevel(level)
    root.addHandler(_Forward(send))
    try:
        if request.get("task") == "encoder":
            cfg = request["cfg"]
            result = ensure_exported(request["checkpoint"], "encoder", "fp32", face_size_px=cfg.face_size_px)
            answer = result["face_encoder"]
        else:
            answer = precision.choose(
                request["checkpoint"],
                request["cfg"],
                first_row=request["first_row"],
                avatar=request["avatar"],
                reuse=False,  # the parent has just tried that
            )
    except LipsyncError as e:
        send(("error", (e.what, e.expected, e.found, e.fix)))
    except Exception:
        send(("crash", traceback.format_exc()))
    else:
        send(("done", answer))

"""What a session started over the network may touch: devices, files, stream URLs.

A session request names paths and URLs that the server opens on its own machine, with its own
rights: a microphone or camera, an audio file to read, a recording to write, a stream to send.
Anyone who can reach the session API would get those rights too, so requests that come over it
pass `SessionPolicy.admit` first; the operator opens each kind at start (the `lipsync serve`
flags named in the refusals). Sessions from the operator's own --sessions file are trusted and
never pass here.

Paths are resolved (symlinks, `..`) before they are compared with the allowed directories, and
the request that goes on carries the resolved paths, so what was checked is what is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from models.errors import LipsyncError
from realtime.service.manager import SessionRequest

# Outputs that reach nothing outside the server: frames thrown away, or sent to the server's own
# WebRTC viewers (who came through the same checks as the API).
HARMLESS_OUTPUTS = ("null", "webrtc")
DEVICE_OUTPUTS = ("vcam", "preview")  # the machine's virtual camera, a window on its screen


class NotAllowed(LipsyncError):
    """The request asks for something the operator did not open (HTTP 403)."""


@dataclass(frozen=True)
class SessionPolicy:
    devices: bool = False  # microphones, cameras, the virtual camera, a preview window
    read_dirs: tuple[str, ...] = ()  # avatar and audio files under these may be read
    write_dirs: tuple[str, ...] = ()  # recordings under these may be written
    url_prefixes: tuple[str, ...] = ()  # stream outputs: scheme://host[:port][/path prefix]
    avatars: tuple[str, ...] = ()  # files any session may show: the studio's own --avatar

    def admit(self, req: SessionRequest) -> SessionRequest:
        """`req` with its paths resolved, or NotAllowed saying what was asked and which flag opens it."""
        avatar = self._avatar(req)
        audio = self._audio(req)
        outputs = tuple(self._output(req, o) for o in req.outputs)
        return replace(req, avatar=avatar, audio=audio, outputs=outputs)

    def _avatar(self, req: SessionRequest) -> str:
        what = f"session {req.session_id!r} avatar"
        if req.avatar.startswith("camera:"):
            self._device(what, req.avatar)
            return req.avatar
        path = _resolved(req.avatar)
        if path in {_resolved(a) for a in self.avatars}:
            return str(path)
        return self._readable(what, path, "the studio's avatar" if self.avatars else "")

    def _audio(self, req: SessionRequest) -> str:
        what = f"session {req.session_id!r} audio"
        if req.audio == "mic" or req.audio.startswith("mic:"):
            self._device(what, req.audio)
            return req.audio
        return self._readable(what, _resolved(req.audio), "")

    def _output(self, req: SessionRequest, target: str) -> str:
        what = f"session {req.session_id!r} output"
        if target in HARMLESS_OUTPUTS:
            return target
        if target in DEVICE_OUTPUTS:
            self._device(what, target)
            return target
        if "://" in target:
            if any(_url_under(target, p) for p in self.url_prefixes):
                return target
            allowed = ", ".join(self.url_prefixes) or "none"
            raise NotAllowed(
                what,
                f"a stream URL the server allows (allowed prefixes: {allowed})",
                repr(target),
                "start lipsync serve with --allow-url PREFIX (e.g. rtmp://host/live/) to allow it",
            )
        path = _resolved(target)
        if any(_inside(path, d) for d in self.write_dirs):
            return str(path)
        raise NotAllowed(
            what,
            f"a file under a directory the server may write ({_dirs(self.write_dirs)})",
            repr(str(path)),
            "start lipsync serve with --allow-write-dir DIR to allow recordings under DIR",
        )

    def _device(self, what: str, name: str) -> None:
        if not self.devices:
            raise NotAllowed(
                what,
                "no devices (the server allows none to sessions started over the API)",
                repr(name),
                "start lipsync serve with --allow-devices to allow microphones, cameras and the virtual camera",
            )

    def _readable(self, what: str, path: Path, also: str) -> str:
        if any(_inside(path, d) for d in self.read_dirs):
            return str(path)
        allowed = _dirs(self.read_dirs) + (f"; or {also}" if also else "")
        raise NotAllowed(
            what,
            f"a file under a directory the server may read ({allowed})",
            repr(str(path)),
            "start lipsync serve with --allow-read-dir DIR to allow files under DIR",
        )


def _resolved(path: str) -> Path:
    return Path(path).resolve()


def _inside(path: Path, directory: str) -> bool:
    return path.is_relative_to(_resolved(directory))


def _dirs(dirs: tuple[str, ...]) -> str:
    return "allowed: " + ", ".join(str(_resolved(d)) for d in dirs) if dirs else "none allowed"


def _url_under(url: str, prefix: str) -> bool:
    """Same scheme, same host and port, and the path starts with the prefix's path: a prefix
    rtmp://a.example/live/ never lets rtmp://a.example.evil.net/... through."""
    u, p = urlsplit(url), urlsplit(prefix)
    if (u.scheme.lower(), u.netloc.lower()) != (p.scheme.lower(), p.netloc.lower()):
        return False
    return u.path.startswith(p.path)

"""Checking what a browser uploads before anything decodes it: size, then kind, then content.

A bad upload is the user's mistake, not the server's: each check raises UploadError with the
HTTP status and a one-line reason, and the session that was running keeps running.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import av

IMAGE_KINDS = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "webp": ".webp"}
VIDEO_KINDS = {"mp4": ".mp4", "matroska/webm": ".mkv", "avi": ".avi"}
AUDIO_KINDS = {"wav": ".wav", "mp3": ".mp3", "ogg": ".ogg", "flac": ".flac", "mp4": ".m4a", "matroska/webm": ".webm"}


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str
    kind: str  # from the content's first bytes, never from the name
    suffix: str


def sniff(head: bytes) -> str | None:
    """The container kind from a file's first bytes (magic numbers), or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska/webm"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    return None


async def read_upload(request, limit_bytes: int, accepted: dict[str, str], what: str) -> Upload:
    """The `file` field of a multipart form (its Content-Type checked by lipsync.web.guard), at
    most `limit_bytes`, of one of the `accepted` kinds."""
    if request.content_length is not None and request.content_length > limit_bytes + 64 * 1024:
        raise UploadError(
            413,
            f"{what}: expected at most {limit_bytes // 2**20} MiB, found "
            f"{request.content_length / 2**20:.1f} MiB; send a shorter or smaller file",
        )
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise UploadError(
                    400, f"{what}: expected a form field named 'file', found none; send the file as the 'file' field"
                )
            if part.name != "file":
                await part.release()
                continue
            data = bytearray()
            while chunk := await part.read_chunk(256 * 1024):
                data += chunk
                if len(data) > limit_bytes:
                    raise UploadError(
                        413,
                        f"{what}: expected at most {limit_bytes // 2**20} MiB, found more; "
                        "send a shorter or smaller file",
                    )
            break
    except UploadError:
        raise
    except (ValueError, AssertionError, RuntimeError) as e:  # aiohttp's multipart parser on a broken form
        raise UploadError(
            400,
            f"{what}: expected a well-formed multipart form, found one that breaks off "
            f"({type(e).__name__}); resend the file",
        ) from None
    if not data:
        raise UploadError(400, f"{what}: expected a file, found an empty 'file' field; choose a file to send")
    kind = sniff(bytes(data[:16]))
    if kind not in accepted:
        found = f"a file of type {kind}" if kind else "content that is none of them"
        raise UploadError(
            415, f"{what}: expected {', '.join(sorted(accepted))}, found {found}; convert the file to one of those"
        )
    return Upload(bytes(data), part.filename or "upload", kind, accepted[kind])


def check_pixels(up: Upload, path: Path, max_pixels: int, what: str) -> None:
    """Refuse a picture or video whose frames are larger than `max_pixels`, from its header,
    before anything decodes it: a small PNG of one colour can claim 30000 x 30000 pixels, and
    decoding it would allocate gigabytes."""
    size = image_size(up.data, up.kind) if up.kind in IMAGE_KINDS else video_size(path)
    if size is None:
        raise UploadError(
            422, f"{what}: expected a {up.kind} file whose header gives its size, found none; re-export it"
        )
    width, height = size
    if width * height > max_pixels:
        raise UploadError(
            413,
            f"{what}: expected at most {max_pixels / 1e6:g} megapixels, found {width}x{height}; "
            "send a smaller picture (the avatar needs no more than about 1920x1080)",
        )


def image_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from an image's header, or None where the header does not give it."""
    try:
        if kind == "png" and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if kind == "bmp":
            if struct.unpack("<I", data[14:18])[0] == 12:  # the old OS/2 header: 16-bit sizes
                width, height = struct.unpack("<HH", data[18:22])
                return width, height
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if kind == "webp":
            return _webp_size(data)
        if kind == "jpeg":
            return _jpeg_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if len(data) < 30:
        return None
    if chunk == b"VP8X":  # extended: 24-bit sizes minus one
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L":  # lossless: 14-bit sizes minus one, packed after a signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the key frame's start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); C4, C8, CC are others
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return (width, height) if height else None  # 0: the height comes later (DNL)
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def video_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of a video's first video stream, from its container, or None."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            ctx = container.streams.video[0].codec_context
            return (ctx.width, ctx.height) if ctx.width and ctx.height else None
    except (av.error.FFmpegError, ValueError):
        return None

"""Checking what a browser uploads before anything decodes it: size, then kind, then content.

A bad upload is the user's mistake, not the server's: each check raises UploadError with the
HTTP status and a one-line reason, and the session that was running keeps running.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """The `file` field of a multipart form, at most `limit_bytes`, of one of the `accepted` kinds."""
    ctype = request.content_type or "none"
    if not ctype.startswith("multipart/form-data"):
        raise UploadError(
            415,
            f"{what}: expected a multipart/form-data upload with a 'file' field, found "
            f"Content-Type {ctype}; send it as a form (curl -F file=@PATH)",
        )
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

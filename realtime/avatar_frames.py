"""A video avatar's frames, decoded when shown instead of held decoded in memory.

A minute of 512x512 video is 1.2 GB of BGR frames but a few MB of H.264. The stream's packets
are kept (compressed, in decode order) and a frame is decoded when it is asked for. A looping
avatar asks in order, which costs one decode per frame; anything else (a pingpong loop on its
way back, a playout going back a few frames after an interrupt) is served from a bounded cache
of recently decoded frames, or by decoding again from the keyframe before it.

H.264 decoding is bit-exact, so a frame has the same pixels however it was reached. That is
checked, not assumed: the first pass records a checksum of every frame, and a frame reached by
decoding from a keyframe other than the first must match it (a stream whose keyframes are not
clean entry points falls back to decoding from the start).
"""

from __future__ import annotations

import collections
import logging
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from models.errors import LipsyncError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Packet:
    data: bytes
    pts: int | None
    dts: int | None
    key: bool


class VideoFrames:
    """Sequence of BGR frames (len, [i], iteration) backed by the video's compressed packets.

    Call `scan()` once (it yields every frame, for the caller's one pass of face tracking)
    before indexing. Thread-safe: the engine's threads may read it concurrently.
    """

    def __init__(
        self, path: str | Path, max_frames: int | None = None, cache_mb: float = 96.0, min_cached_frames: int = 16
    ):
        self.path, self.max_frames = str(path), max_frames
        self._cache_mb, self._min_cached = cache_mb, min_cached_frames
        what = f"face {path}"
        if not Path(path).is_file():
            raise LipsyncError(what, "an image or video file", "no such file", "check the path")
        try:
            self._container = av.open(self.path)
            if not self._container.streams.video:
                raise LipsyncError(
                    what,
                    "an image or a video with a video stream",
                    "no video stream",
                    "pass a photo or a video of the face",
                )
            stream = self._container.streams.video[0]
            self.fps = float(stream.average_rate or stream.guessed_rate or 25)
            self._time_base = stream.time_base
            self._packets = [
                _Packet(bytes(p), p.pts, p.dts, bool(p.is_keyframe)) for p in self._container.demux(stream) if p.size
            ]
        except LipsyncError:
            raise
        except (av.error.FFmpegError, ValueError) as e:
            raise LipsyncError(
                what, "a readable video", f"data FFmpeg cannot decode ({type(e).__name__}: {e})", "re-export the video"
            ) from None
        self._ctx = stream.codec_context  # the demuxer's own parameters (extradata, size) set it up
        self._lock = threading.RLock()
        self._index: dict[int, int] = {}  # pts -> frame number
        self._crc: list[int] = []
        self._shape: tuple[int, ...] | None = None
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._capacity = min_cached_frames
        self._starts: list[tuple[int, int]] = [(0, 0)]  # (packet, first frame it shows) decoding may start at
        self._next_pkt = 0  # the decoder's position: next packet to feed ...
        self._next_frame: int | None = None  # ... and the frame it will output next (None: unknown)
        self._pending: collections.deque = collections.deque()
        self._start_frame = 0  # frames before this one cannot come out of the current decode
        self._drained = False
        self.decoded = 0  # frames decoded after the first pass (the cost of showing them)
        self.seeks = 0
        self._scanned = False

    # -- the first pass --------------------------------------------------------------------------
    def scan(self):
        """Every frame in order, decoded once; records what random access needs."""
        if self._scanned:
            yield from self
            return
        pts_seen: list[int | None] = []
        fed = 0
        try:
            self._reset(0)
            while self.max_frames is None or len(pts_seen) < self.max_frames:
                frame = self._decode_next()
                if frame is None:
                    break
                if self._shape is not None and (frame.height, frame.width) != self._shape[:2]:
                    # Everything downstream (boxes, crops, the paste) assumes one size; and a stream
                    # that grows mid-way would get past the upload's header check of the first frame.
                    raise LipsyncError(
                        f"face {self.path}",
                        f"frames of one size ({self._shape[1]}x{self._shape[0]}, the first frame's)",
                        f"a {frame.width}x{frame.height} frame at frame {len(pts_seen)}",
                        "re-export the video at one size",
                    )
                img = frame.to_ndarray(format="bgr24")
                if self._shape is None:
                    self._shape = img.shape
                pts_seen.append(frame.pts)
                self._crc.append(zlib.crc32(img))
                fed = self._next_pkt
                yield img
        except (av.error.FFmpegError, ValueError) as e:
            raise LipsyncError(
                f"face {self.path}",
                "a readable video",
                f"data FFmpeg cannot decode ({type(e).__name__}: {e})",
                "re-export the video",
            ) from None
        if not pts_seen or self._shape is None or 0 in self._shape:
            raise LipsyncError(f"face {self.path}", "at least one non-empty frame", "none", "pass a valid video")
        if self.max_frames is not None and len(pts_seen) >= self.max_frames:
            del self._packets[fed:]  # later packets only show frames past the cap
        self._n = len(pts_seen)
        unique = None not in pts_seen and len(set(pts_seen)) == len(pts_seen)
        if unique:
            self._index = {p: i for i, p in enumerate(pts_seen)}
            self._starts = [
                (k, self._index[p.pts]) for k, p in enumerate(self._packets) if p.key and p.pts in self._index
            ]
            if not self._starts or self._starts[0][0] != 0:
                self._starts.insert(0, (0, 0))
        self._capacity = max(self._min_cached, int(self._cache_mb * 1e6 // int(np.prod(self._shape))))
        self._scanned = True
        self._reset(0)
        log.debug(
            "%s: %d frames, %d packets (%.1f MB), %d entry points, cache of %d frames",
            self.path,
            self._n,
            len(self._packets),
            sum(len(p.data) for p in self._packets) / 1e6,
            len(self._starts),
            self._capacity,
        )

    # -- sequence --------------------------------------------------------------------------------
    def __len__(self) -> int:
        self._need_scan()
        return self._n

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> np.ndarray:
        self._need_scan()
        if not isinstance(i, (int, np.integer)):
            raise TypeError("VideoFrames takes an integer index")
        i = int(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
            return self._decode_to(i)

    @property
    def shape(self) -> tuple[int, ...]:
        self._need_scan()
        return self._shape

    @property
    def compressed_bytes(self) -> int:
        return sum(len(p.data) for p in self._packets)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._container.close()

    # -- decoding --------------------------------------------------------------------------------
    def _need_scan(self) -> None:
        if not self._scanned:
            raise RuntimeError("VideoFrames.scan() must run once before frames are read")

    def _reset(self, start: int, first_frame: int | None = 0) -> None:
        """Put the decoder at packet `start`, a keyframe whose first shown frame is `first_frame`."""
        self._ctx.flush_buffers()
        self._next_pkt, self._next_frame, self._start_frame = start, first_frame, first_frame or 0
        self._pending.clear()
        self._drained = False

    def _decode_next(self):
        """The decoder's next output frame (an av.VideoFrame), or None at the end of the stream."""
        while not self._pending:
            if self._drained:
                return None
            if self._next_pkt < len(self._packets):
                p = self._packets[self._next_pkt]
                pkt = av.Packet(p.data)
                pkt.pts, pkt.dts, pkt.time_base = p.pts, p.dts, self._time_base
                self._next_pkt += 1
                self._pending.extend(self._ctx.decode(pkt))
            else:
                self._pending.extend(self._ctx.decode(None))
                self._drained = True
        return self._pending.popleft()

    def _frame_number(self, frame) -> int | None:
        if self._index:
            return self._index.get(frame.pts)
        n = self._next_frame  # no usable timestamps: count outputs from the start
        self._next_frame = None if n is None else n + 1
        return n

    def _entry_for(self, i: int) -> tuple[int, int]:
        """The last entry point (packet, its first frame) at or before frame `i`."""
        best = self._starts[0]
        for start in self._starts:
            if start[1] <= i:
                best = start
            else:
                break
        return best

    def _decode_to(self, i: int) -> np.ndarray:
        start, first = self._entry_for(i)
        ahead = self._next_frame is not None and self._next_frame <= i
        if not ahead or first > self._next_frame:  # behind the decoder, or a keyframe is nearer
            self._reset(start, first)
            self.seeks += 1
        while True:
            frame = self._decode_next()
            if frame is None:  # cannot happen for a scanned stream unless the keyframe lied
                return self._from_the_start(i, "the stream ended first")
            n = self._frame_number(frame)
            if n is None or n < self._start_frame:
                continue  # past the cap, or a leading frame that belongs to the previous keyframe
            self._next_frame = n + 1
            img = frame.to_ndarray(format="bgr24")
            self.decoded += 1
            if self._start_frame > 0 and n == i and zlib.crc32(img) != self._crc[n]:
                return self._from_the_start(i, "its pixels differ from the first pass")
            self._put(n, img)
            if n == i:
                return img
            if n > i:  # the frame never came out (reordered past it): take the slow, sure path
                return self._from_the_start(i, "it did not come out where expected")

    def _from_the_start(self, i: int, why: str) -> np.ndarray:
        log.warning(
            "%s: frame %d decoded from a keyframe failed (%s); decoding from the start from now on", self.path, i, why
        )
        self._starts = [(0, 0)]
        self._reset(0, 0)
        self._cache.pop(i, None)
        return self._decode_to(i)

    def _put(self, n: int, img: np.ndarray) -> None:
        self._cache[n] = img
        self._cache.move_to_end(n)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)

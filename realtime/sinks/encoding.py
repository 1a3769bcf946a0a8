"""H.264 settings for the live sinks (stream and recording): real time first.

x264's default preset (medium) with a look-ahead costs ~50% of two cores for a 640x480 live
recording here and delays every frame by its look-ahead. Live sinks encode on their own thread
(one encoder thread each, see realtime.threads), so the settings are chosen for that:
  preset   ultrafast by default: measured on this 2-core machine at 512x512 / 1280x720 (one
           thread, zerolatency) ~2.0 / 6.4 ms per frame vs veryfast ~4.1 / 12.5 ms with the same
           bitrate; pick veryfast or slower where cores are free (better picture per bit)
  tune     zerolatency: no look-ahead and no B-frames, so a frame leaves as soon as it is encoded
  bitrate  a target with a VBV cap (maxrate = bitrate, buffer = 2 s of it), as ingest servers
           expect; keyframes exactly every keyframe_interval_s (no extra ones at scene cuts, as
           ingest servers ask): what a late viewer waits for its first picture
"""

from __future__ import annotations

from dataclasses import dataclass

from realtime.threads import encoder_options

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
X264_TUNES = ("zerolatency", "film", "animation", "grain", "stillimage", "psnr", "ssim", "fastdecode")


@dataclass(frozen=True)
class LiveVideoEncoding:
    preset: str = "ultrafast"
    tune: str = "zerolatency"
    bitrate_kbps: int = 2_500
    keyframe_interval_s: float = 2.0

    def __post_init__(self):
        if self.preset not in X264_PRESETS:
            raise ValueError(f"x264 preset must be one of {', '.join(X264_PRESETS)}, not {self.preset!r}")
        if self.tune not in X264_TUNES:
            raise ValueError(f"x264 tune must be one of {', '.join(X264_TUNES)}, not {self.tune!r}")
        if self.bitrate_kbps <= 0:
            raise ValueError(f"bitrate_kbps must be positive, not {self.bitrate_kbps}")
        if self.keyframe_interval_s <= 0:
            raise ValueError(f"keyframe_interval_s must be positive, not {self.keyframe_interval_s}")

    def gop_frames(self, fps: float) -> int:
        return max(1, round(float(fps) * self.keyframe_interval_s))

    def x264_options(self, fps: float) -> dict[str, str]:
        return {
            "preset": self.preset,
            "tune": self.tune,
            "b": f"{self.bitrate_kbps}k",
            "maxrate": f"{self.bitrate_kbps}k",
            "bufsize": f"{2 * self.bitrate_kbps}k",
            "g": str(self.gop_frames(fps)),
            "sc_threshold": "0",
            **encoder_options(),
        }

    def bytes_per_keyframe_interval(self) -> int:
        """About what one keyframe interval of video occupies (what a fragmented file buffers)."""
        return int(self.bitrate_kbps * 1000 / 8 * self.keyframe_interval_s)

"""Reads an RTMP stream in its own process (as a viewer would) and reports what arrived, as JSON."""

import json
import sys

import av


def main(url: str, max_video_frames: int, open_timeout_s: float) -> None:
    report = {"video_frames": 0, "video_pts_s": [], "audio_pts_s": [], "key_pts_s": [], "size": None, "error": None}
    try:
        with av.open(url, options={"rtmp_live": "live"}, timeout=(open_timeout_s, 5.0)) as c:
            streams = [s for s in c.streams if s.type in ("video", "audio")]
            for packet in c.demux(streams):
                if packet.pts is None:
                    continue
                t = float(packet.pts * packet.time_base)
                if packet.stream.type == "audio":
                    report["audio_pts_s"].append(t)
                    continue
                if packet.is_keyframe:
                    report["key_pts_s"].append(t)
                for frame in packet.decode():
                    report["video_frames"] += 1
                    report["video_pts_s"].append(float(frame.pts * frame.time_base))
                    report["size"] = [frame.width, frame.height]
                if report["video_frames"] >= max_video_frames:
                    break
    except Exception as e:  # the report says how reading ended; the test decides
        report["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))

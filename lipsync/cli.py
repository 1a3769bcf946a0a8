"""`lipsync` command line: `render` (the classic pipeline), `export` (checkpoint -> ONNX cache),
`live`, `devices` and `cache` (list or clear the cache folder)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from pathlib import Path

from export.cache import ensure_exported
from lipsync import render_command
from lipsync.console import STATUS, configure_logging
from lipsync.web.server import StudioConfig, run_studio
from mediaio.audio import decode_audio
from models import cache_limit
from models.errors import EngineFailure, LipsyncError
from realtime import threads
from realtime.config import EngineConfig
from realtime.generator import RuntimeConfig
from realtime.live import build_engine, build_playout, build_renderer, choose_engine, make_sink, make_source
from realtime.playout import PlayoutConfig
from realtime.service.manager import ManagerConfig, SessionManager, SessionRequest, check_request
from realtime.service.policy import SessionPolicy
from realtime.service.ray_backend import NAMESPACE, init_local_ray
from realtime.sinks.audio_out import AudioOutSink
from realtime.sinks.encoding import X264_PRESETS, LiveVideoEncoding
from realtime.stats_log import StatsLog, StatsLogConfig
from realtime.stats_plot import plot_stats

CHECKPOINT_HELP = (
    "default: wav2lip_gan.pth or wav2lip.pth in ./checkpoints/, else in checkpoints/ of the cache "
    "folder ($LIPSYNC_CACHE_DIR, default ~/.cache/lipsync)"
)


def _export(args) -> int:
    paths = ensure_exported(args.checkpoint, args.layout, args.precision, face_size_px=args.face_size)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _session(args, audio_rate_hz: int = 48_000):
    """What both live modes set up the same way: the thread budget, engine and runtime settings,
    and the sinks (audio passthrough included) taking audio at `audio_rate_hz`."""
    threads.apply(threads.plan("live"))
    cfg = EngineConfig(
        fps=args.fps, mel_offset_frames=args.mel_offset, blend=args.blend, output_audio_rate_hz=audio_rate_hz
    )
    runtime = RuntimeConfig(
        runtime=args.runtime,
        precision=args.precision,
        device=args.device,
        intra_op_threads=threads.current().inference_threads,
        face_size_px=args.face_size,
    )

    try:
        encoding = LiveVideoEncoding(
            preset=args.x264_preset, bitrate_kbps=args.video_bitrate_kbps, keyframe_interval_s=args.keyframe_interval_s
        )
    except ValueError as e:
        raise LipsyncError(
            "--video-bitrate-kbps / --keyframe-interval-s", "positive numbers", str(e), "give values above zero"
        ) from None
    sinks = [make_sink(t, args.fps, audio_rate_hz, encoding) for t in (args.to or ["vcam"])]
    if args.audio_out is not None:
        dev = (
            None
            if args.audio_out == "default"
            else (int(args.audio_out) if args.audio_out.isdigit() else args.audio_out)
        )
        sinks.append(AudioOutSink(args.audio_out_delay_ms, dev, sample_rate_hz=audio_rate_hz))
    return cfg, runtime, sinks


def _live(args) -> int:
    if args.audio_pacing == "burst" and args.audio == "mic":
        raise LipsyncError(
            "--audio-pacing burst",
            "an audio file to push as a TTS engine would",
            "--audio mic",
            "give --audio FILE, or drop --audio-pacing for the microphone",
        )
    mode = args.mode if args.mode != "auto" else ("playout" if args.audio_pacing == "burst" else "capture")
    if mode == "playout":
        if args.audio == "mic":
            raise LipsyncError(
                "--mode playout",
                "pushed audio (a file)",
                "--audio mic",
                "the microphone is captured live: use --mode capture (the default)",
            )
        return _live_playout(args)

    stats_log = _stats_log(args)  # a bad path fails now, not after the models have loaded
    try:
        cfg, runtime, sinks = _session(args)
        source = make_source(
            args.audio, loop=args.loop, mic_device=args.mic_device, mic_give_up_after_s=args.mic_give_up_s
        )
        engine = build_engine(
            args.avatar, sinks, args.checkpoint, runtime, cfg, loop=args.avatar_loop, engine=args.engine
        )
    except BaseException:
        if stats_log is not None:
            stats_log.abandon()  # no empty file left behind by a session that never started
        raise
    done = threading.Event()

    def status():
        while not done.wait(1.0):
            extra = "  ".join(getattr(s, "status", "") for s in sinks if getattr(s, "status", ""))
            STATUS.show(f"{engine.stats.status_line()}  {extra}")

    status_thread = threading.Thread(target=status, daemon=True)

    def started():
        print(
            f"live: {source.name} -> {', '.join(s.name for s in sinks)} with {engine.renderer.name} (Ctrl-C stops)",
            file=sys.stderr,
        )
        status_thread.start()
        if stats_log is not None:
            stats_log.start(engine.stats, engine.gauges)

    try:
        summary = engine.run(source, args.duration, on_started=started)
    finally:
        done.set()
        if status_thread.is_alive():  # its last status line must come before the summary or error
            status_thread.join(timeout=5)
        if stats_log is not None:
            stats_log.close()
        STATUS.end()
    if getattr(source, "overflows", 0):
        summary["input_overflows"] = source.overflows
    if args.stats_json:
        engine.stats.write_json(args.stats_json)
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _stats_log(args):
    if not args.stats_jsonl:
        return None
    return StatsLog(args.stats_jsonl, StatsLogConfig(interval_s=args.stats_interval))


def _plot(args) -> int:
    plot_stats(args.jsonl, args.output)
    print(f"plot: {args.output}", file=sys.stderr)
    return 0


def _devices(args) -> int:
    try:
        import sounddevice as sd  # sounddevice: needs the PortAudio library; reported below if missing

        devices = sd.query_devices()
        print("audio inputs:")
        for i, d in enumerate(devices):
            if d["max_input_channels"] > 0:
                print(f"  {i}: {d['name']} ({int(d['default_samplerate'])} Hz)")
        print("audio outputs:")
        for i, d in enumerate(devices):
            if d["max_output_channels"] > 0:
                print(f"  {i}: {d['name']} ({int(d['default_samplerate'])} Hz)")
    except (ImportError, OSError) as e:
        print(f"audio: unavailable ({str(e).splitlines()[0]}); install libportaudio2 and sounddevice")
    try:
        import pyvirtualcam  # pyvirtualcam: reported below if it is not installed

        print("virtual camera backends:", ", ".join(sorted(pyvirtualcam.camera.BACKENDS)) or "none")
    except ImportError:
        print("virtual camera: pyvirtualcam not installed")
    return 0


def _cache(args) -> int:
    """`lipsync cache list|clear`: what the cache folder holds, least recently used first."""
    root, limit = cache_limit.root(), cache_limit.limit_bytes()
    entries = [e for e in cache_limit.entries() if args.kind in (None, e.kind)]
    if args.action == "clear":
        for e in entries:
            cache_limit.remove(e)
        temps = cache_limit.stale_temps(age_s=0) if args.kind is None else []
        for p in temps:
            p.unlink(missing_ok=True)
        freed = sum(e.size_bytes for e in entries)
        print(
            f"removed {len(entries)} entries ({freed / 1e6:.1f} MB) from {root}"
            + (f" and {len(temps)} temp files" if temps else "")
        )
        return 0
    total = sum(e.size_bytes for e in entries)
    if args.json:
        print(
            json.dumps(
                {
                    "root": str(root),
                    "limit_mb": limit / 1e6,
                    "total_mb": round(total / 1e6, 3),
                    "entries": [
                        {
                            "kind": e.kind,
                            "name": e.name,
                            "size_mb": round(e.size_bytes / 1e6, 3),
                            "last_used": round(e.last_used_s, 3),
                        }
                        for e in entries
                    ],
                }
            )
        )
        return 0
    print(
        f"{root}  (limit {'none' if limit <= 0 else f'{limit / 1e6:.0f} MB'}, "
        f"${cache_limit.ENV_LIMIT}; least recently used first)"
    )
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used_s))
        print(f"  {e.kind:<11} {e.size_bytes / 1e6:9.1f} MB  {when}  {e.name}")
    print(f"total {total / 1e6:.1f} MB in {len(entries)} entries")
    return 0


def _live_playout(args) -> int:
    """Playout: the file pushed as a TTS engine would (burst: 1 s pieces as fast as accepted;
    realtime: 20 ms pieces at real time), frames paced by the output clock until it has played."""
    pcfg = PlayoutConfig()
    stats_log = _stats_log(args)
    try:
        cfg, runtime, sinks = _session(args, pcfg.output_rate_hz)
        audio = decode_audio(args.audio)
        pcm, rate = audio.pcm.mean(axis=0).astype("float32"), audio.sample_rate_hz
        pl = build_playout(
            args.avatar,
            sinks,
            args.checkpoint,
            runtime,
            cfg,
            pcfg,
            loop=args.avatar_loop,
            engine=args.engine,
            reader=False,
        )
    except BaseException:
        if stats_log is not None:
            stats_log.abandon()
        raise
    print(
        f"live (playout, {args.audio_pacing} pushes): file:{args.audio} -> {', '.join(s.name for s in sinks)} "
        f"with {pl.renderer.name} (Ctrl-C stops)",
        file=sys.stderr,
    )
    pl.start()
    done = threading.Event()

    def status():
        while not done.wait(1.0):
            STATUS.show(pl.stats.status_line())

    status_thread = threading.Thread(target=status, daemon=True)
    status_thread.start()
    if stats_log is not None:
        stats_log.start(pl.stats, pl.gauges)
    piece = rate if args.audio_pacing == "burst" else rate // 50
    limit = None if args.duration is None else int(args.duration * rate)
    t0, sent = time.monotonic(), 0
    try:
        while limit is None or sent < limit:
            pos = sent % len(pcm) if args.loop else sent
            if pos >= len(pcm):
                break
            n = min(piece, len(pcm) - pos, (limit - sent) if limit is not None else piece)
            if args.audio_pacing == "realtime":
                time.sleep(max(0.0, t0 + (sent + n) / rate - time.monotonic()))
            pl.push_audio(pcm[pos : pos + n], rate)  # waits while max_pending_s is queued
            sent += n
        pl.end_segment()
        # Until it has all played; a failed worker or sink ends the wait within a second.
        while not pl.wait_idle(timeout_s=0.5):
            if pl.error is not None:
                break
    except KeyboardInterrupt:
        pl.interrupt()
    except EngineFailure:
        pass  # the playout failed; stop() reports why
    finally:
        done.set()
        status_thread.join(timeout=5)
        if stats_log is not None:
            stats_log.close()
        STATUS.end()
    summary = pl.stop()  # raises EngineFailure if a thread or sink failed
    if args.stats_json:
        pl.stats.write_json(args.stats_json)
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _serve(args) -> int:
    threads.apply(threads.plan("live"))
    cfg = EngineConfig(fps=args.fps, mel_offset_frames=args.mel_offset, blend=args.blend, output_audio_rate_hz=48_000)
    runtime = RuntimeConfig(
        runtime=args.runtime,
        precision=args.precision,
        device=args.device,
        intra_op_threads=threads.current().inference_threads,
        face_size_px=args.face_size,
    )

    def build(path: str):
        return build_renderer(path, args.checkpoint, runtime, cfg, engine=args.engine)

    if args.avatar is None and args.sessions is None:
        raise LipsyncError(
            "serve",
            "--avatar (the browser studio) and/or --sessions FILE.json (headless sessions)",
            "neither",
            "give at least one of them",
        )
    requests = _session_requests(args.sessions) if args.sessions else []
    kind, checkpoint = choose_engine(args.engine, args.checkpoint)
    if args.backend == "ray":
        _init_ray(args.ray_address)
    manager = SessionManager(
        checkpoint if kind == "wav2lip" else None, runtime, cfg, ManagerConfig(backend=args.backend)
    )
    return run_studio(
        args.avatar,
        build,
        cfg,
        StudioConfig(
            host=args.host,
            port=args.port,
            token=args.token,
            allowed_hosts=tuple(args.allowed_host),
            policy=_session_policy(args),
        ),
        manager=manager,
        sessions=requests,
    )


def _session_policy(args) -> SessionPolicy:
    """What sessions started over /api/sessions may touch (README, "Security")."""
    for flag, dirs in (("--allow-read-dir", args.allow_read_dir), ("--allow-write-dir", args.allow_write_dir)):
        for d in dirs:
            if not Path(d).is_dir():
                raise LipsyncError(flag, "an existing directory", repr(d), "create it or fix the path")
    for prefix in args.allow_url:
        if "://" not in prefix or not prefix.split("://", 1)[1]:
            raise LipsyncError(
                "--allow-url", "a URL prefix with scheme and host", repr(prefix), "give e.g. rtmp://host/live/"
            )
    return SessionPolicy(
        devices=args.allow_devices,
        read_dirs=tuple(args.allow_read_dir),
        write_dirs=tuple(args.allow_write_dir),
        url_prefixes=tuple(args.allow_url),
        avatars=(args.avatar,) if args.avatar else (),
    )


def _session_requests(path: str) -> list:
    """The --sessions file: a JSON list of session objects (see README, 'Hosting several avatars')."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise LipsyncError("--sessions", "a readable JSON file", f"{path} ({e.strerror})", "check the path") from None
    except ValueError as e:
        raise LipsyncError(
            "--sessions", "a JSON list of session objects", f"invalid JSON in {path} ({e})", "fix the file"
        ) from None
    if not isinstance(doc, list):
        raise LipsyncError(
            "--sessions", "a JSON list of session objects", type(doc).__name__, "wrap the objects in [ ... ]"
        )
    requests = [SessionRequest.from_json(d) for d in doc]
    ids = [r.session_id for r in requests]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise LipsyncError("--sessions", "a distinct id per session", f"{dup!r} twice", "rename one")
    for r in requests:
        check_request(r)
    return requests


def _init_ray(address: str | None) -> None:
    """A cluster's address, or a local Ray (which refuses outside a loopback-only namespace)."""
    if address is not None:
        import ray  # ray: the ray extra, needed only by --backend ray

        ray.init(address=address, namespace=NAMESPACE)
        return
    init_local_ray()


VERBOSITY = {"-v": logging.DEBUG, "--verbose": logging.DEBUG, "-q": logging.WARNING, "--quiet": logging.WARNING}


def _face_size_flag(parser) -> None:
    parser.add_argument(
        "--face-size",
        dest="face_size",
        type=int,
        default=0,
        help="face size in pixels for an HD checkpoint of the SAM layout, whose weights do not store it "
        "(384 for the published model); other checkpoints fix their own",
    )


def _verbosity_flags(parser, default) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "-v",
        "--verbose",
        dest="log_level",
        action="store_const",
        const=logging.DEBUG,
        default=default,
        help="also debug messages",
    )
    g.add_argument(
        "-q",
        "--quiet",
        dest="log_level",
        action="store_const",
        const=logging.WARNING,
        default=default,
        help="only warnings and errors (the status line stays)",
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    lead = 0  # `lipsync -v render ...`: render's own flags are inference.py's, so only leading ones are ours
    while argv[lead : lead + 1] and argv[lead] in VERBOSITY:
        lead += 1
    if argv[lead : lead + 1] == ["render"]:
        configure_logging(VERBOSITY[argv[lead - 1]] if lead else logging.INFO)
        return render_command.main(argv[lead + 1 :])
    ap = argparse.ArgumentParser(prog="lipsync", description="Real-time lip-sync on Wav2Lip.")
    _verbosity_flags(ap, logging.INFO)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("render", help="offline render; takes inference.py's flags", add_help=False)
    ex = sub.add_parser("export", help="export a checkpoint to verified ONNX graphs in the cache")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--layout", choices=["full", "split"], default="full")
    ex.add_argument("--precision", default="fp32", choices=["fp32", "int8", "int8-ort", "fp16"])
    _face_size_flag(ex)
    lv = sub.add_parser("live", help="lip-sync live audio onto an avatar and send it out")
    lv.add_argument("--avatar", required=True, help="photo or video (looped)")
    lv.add_argument("--audio", default="mic", help="'mic' or an audio file played in real time")
    lv.add_argument(
        "--to",
        action="append",
        help="vcam | preview | null | rtmp://... | udp://... | srt://... | FILE.mp4/.mkv (repeatable; default vcam)",
    )
    lv.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    lv.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "wav2lip", "procedural"],
        help="auto: wav2lip with a checkpoint, else the weight-free procedural engine",
    )
    lv.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "onnxruntime", "openvino"],
        help="auto: the precision ladder picks; a value pins it",
    )
    lv.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "int8", "int8-mixed", "bf16", "fp16"],
        help="auto: the fastest that passes the quality gate on this machine; a value pins it "
        "(refused with the measured figures if it fails the gate)",
    )
    lv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    _face_size_flag(lv)
    lv.add_argument("--fps", type=float, default=25.0)
    lv.add_argument("--duration", type=float, default=None, help="seconds; default: until the input ends or Ctrl-C")
    lv.add_argument("--loop", action="store_true", help="loop the audio file")
    lv.add_argument("--avatar-loop", default="forward", choices=["forward", "pingpong"])
    lv.add_argument("--mic-device", default=None, help="input device index or name (see `lipsync devices`)")
    lv.add_argument(
        "--mic-give-up-s",
        type=float,
        default=60.0,
        help="a microphone that goes away mid-run is reopened for this long (idle frames go on "
        "meanwhile), then the session stops",
    )
    lv.add_argument("--mel-offset", type=int, default=-1, help="-1: training alignment; 0: reference tool's")
    lv.add_argument(
        "--audio-out",
        default=None,
        metavar="DEVICE",
        help="play the input audio, delayed to match the video, to this output ('default', index or name)",
    )
    lv.add_argument(
        "--audio-out-delay-ms", type=int, default=200, help="passthrough delay; ~ the measured audio-to-frame latency"
    )
    lv.add_argument(
        "--blend",
        default="feather",
        choices=["feather", "hard"],
        help="feather: keypoint mask + colour match; hard: the reference rectangle",
    )
    lv.add_argument("--stats-json", default=None, help="write the whole run's figures to this JSON file at the end")
    lv.add_argument(
        "--stats-jsonl",
        default=None,
        metavar="PATH",
        help="append one JSON line per interval while running (fps, drops, latency p50/p95/max, CPU, "
        "RSS, queues, A/V offset); draw it with `lipsync plot`",
    )
    lv.add_argument(
        "--stats-interval",
        type=float,
        default=StatsLogConfig.interval_s,
        metavar="SECONDS",
        help="interval of --stats-jsonl lines",
    )

    enc = LiveVideoEncoding()
    lv.add_argument(
        "--video-bitrate-kbps",
        type=int,
        default=enc.bitrate_kbps,
        help="H.264 target bitrate of streams and recordings (capped at this rate)",
    )
    lv.add_argument(
        "--keyframe-interval-s",
        type=float,
        default=enc.keyframe_interval_s,
        help="a keyframe every this many seconds (what a viewer joining late waits)",
    )
    lv.add_argument(
        "--x264-preset",
        default=enc.preset,
        choices=X264_PRESETS,
        help="ultrafast: least CPU (the default, for 2-4 core machines); veryfast or slower: "
        "a better picture per bit where cores are free",
    )
    lv.add_argument(
        "--audio-pacing",
        default="realtime",
        choices=["realtime", "burst"],
        help="burst: push the file as a TTS engine would (1 s pieces, as fast as accepted); implies --mode playout",
    )
    lv.add_argument(
        "--mode",
        default="auto",
        choices=["auto", "capture", "playout"],
        help="capture: audio is the clock, late frames skipped (microphone); playout: everything "
        "pushed is played at the output clock's pace (TTS); auto: playout for burst pacing",
    )
    sv = sub.add_parser("serve", help="the browser studio: talk to the avatar over WebRTC")
    sv.add_argument(
        "--avatar",
        default=None,
        help="the browser studio's avatar: photo or video (switchable from "
        "the page); without it, only --sessions / /api/sessions",
    )
    sv.add_argument(
        "--sessions",
        default=None,
        help='JSON list of headless sessions to start: [{"id", "avatar", "audio", "outputs"}, ...]',
    )
    sv.add_argument(
        "--backend",
        default="inprocess",
        choices=["inprocess", "ray"],
        help="sessions over one generator in this process, or as Ray actors (extra ray)",
    )
    sv.add_argument("--ray-address", default=None, help="--backend ray: a cluster (e.g. auto); default a local Ray")
    sv.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP)
    sv.add_argument("--engine", default="auto", choices=["auto", "wav2lip", "procedural"])
    sv.add_argument("--runtime", default="auto", choices=["auto", "onnxruntime", "openvino"])
    sv.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8", "int8-mixed", "bf16", "fp16"])
    sv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"])
    _face_size_flag(sv)
    sv.add_argument("--fps", type=float, default=25.0)
    sv.add_argument("--mel-offset", type=int, default=-1)
    sv.add_argument("--blend", default="feather", choices=["feather", "hard"])
    sv.add_argument("--host", default="127.0.0.1", help="a non-loopback host requires a token (printed at start)")
    sv.add_argument("--port", type=int, default=8080, help="0: any free port (printed)")
    sv.add_argument(
        "--token",
        default=None,
        help="required on /offer and /api/ (also on loopback when given); default: random when --host is not loopback",
    )
    sv.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME[:PORT]",
        help="a Host name the server answers to besides IP addresses, localhost and --host (a DNS name, a "
        "reverse proxy's public name); repeatable",
    )
    sv.add_argument(
        "--allow-devices",
        action="store_true",
        help="sessions started over the API may use microphones (mic, mic:DEV), cameras (camera:N) and vcam",
    )
    sv.add_argument(
        "--allow-read-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="sessions started over the API may read avatar and audio files under DIR; repeatable",
    )
    sv.add_argument(
        "--allow-write-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="sessions started over the API may record .mp4/.mkv files under DIR; repeatable",
    )
    sv.add_argument(
        "--allow-url",
        action="append",
        default=[],
        metavar="PREFIX",
        help="sessions started over the API may stream to URLs under PREFIX (same scheme and host:port, "
        "path starting with its path: rtmp://host/live/); repeatable",
    )
    sub.add_parser("devices", help="list audio devices and virtual camera backends")
    pl = sub.add_parser("plot", help="draw a --stats-jsonl file (needs matplotlib: the bench extra)")
    pl.add_argument("jsonl", help="the file `lipsync live --stats-jsonl` wrote")
    pl.add_argument("-o", "--output", required=True, help="image to write (.png, .svg, .pdf)")
    ca = sub.add_parser("cache", help="list or clear the cache (exports, avatar features, face boxes)")
    ca.add_argument("action", choices=["list", "clear"])
    ca.add_argument(
        "--kind",
        choices=["exports", "avatars", "detections"],
        default=None,
        help="only this kind of entry (default: all; the face model is never removed)",
    )
    ca.add_argument("--json", action="store_true", help="list: one JSON object")
    for p in sub.choices.values():  # after the command too; given there, it wins
        if p is not sub.choices["render"]:
            _verbosity_flags(p, argparse.SUPPRESS)
    args = ap.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return {"export": _export, "live": _live, "serve": _serve, "devices": _devices, "plot": _plot, "cache": _cache}[
            args.command
        ](args)
    except (LipsyncError, EngineFailure) as e:
        # A run-time failure ends a status line that has no newline yet.
        print(f"{chr(10) if isinstance(e, EngineFailure) else ''}error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # Ctrl-C before a session ran (a running one stops cleanly by itself)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The browser studio in a real browser: Debian's Chromium, headless, driven by Playwright.

    unshare -n bash -c 'ip link set lo up; exec .venv/bin/python benchmarks/bench_studio.py \
        --seconds 30 --json benchmarks/results/studio.json --screenshot docs/studio.png'

Run it inside a network namespace that has only loopback (as above, as root): WebRTC then cannot
leave the machine. It starts `lipsync serve` on a free port, opens the page with `?autostart=1`
and a fake microphone playing speech with pauses (looped by Chromium), and reads, from the page:
the video decoded per second, the round trip from a speech onset at the microphone to the onset
of lip motion in the decoded video (the page's own clocks), and the lip motion in speech vs
silence. With --checks it also sends bad uploads and requests, speaks and interrupts a file,
switches the avatar, and closes the tab to see the session freed.

Without --checkpoint it makes bench_generator's hardest stand-in (not a test checkpoint) in a
child; `--engine procedural` needs no weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import standin_checkpoint, write_json  # noqa: E402

AVATAR = ROOT / "media" / "avatar.jpg"
SPEECH = ROOT / "media" / "speech.mp3"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def mic_wav(src: Path, out: Path, phrase_s: float = 1.2, gap_s: float = 0.8, rate: int = 48_000) -> Path:
    """`src` cut into `phrase_s` pieces with `gap_s` of silence before each, as 16-bit mono wav
    (Chromium loops it): a clean speech onset every ~2 s for the round-trip measurement."""
    import wave

    import soxr

    from mediaio.audio import decode_audio

    d = decode_audio(src)
    pcm = soxr.resample(d.pcm.mean(axis=0), d.sample_rate_hz, rate, quality="HQ").astype(np.float32)
    step, gap = int(phrase_s * rate), np.zeros(int(gap_s * rate), np.float32)
    pieces = []
    for i in range(0, len(pcm) - step + 1, step):
        piece = pcm[i : i + step]
        start = int(np.argmax(np.abs(piece) > 0.02))  # start each phrase where the voice is
        pieces += [gap, piece[start:]]
    s16 = (np.clip(np.concatenate(pieces), -1, 1) * 32767).astype(np.int16)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(s16.tobytes())
    return out


def start_server(args, env) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "lipsync.cli",
        "serve",
        "--avatar",
        str(args.avatar),
        "--port",
        "0",
        "--engine",
        args.engine,
    ]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + args.start_timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("studio: open "):
            return proc, line.split()[2]
    proc.kill()
    raise SystemExit("studio did not start:\n" + "".join(lines))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: bytes = b"", ctype: str | None = None) -> tuple[int, dict]:
    # No body: no data at all (urllib would label even b"" as a form, which the server refuses).
    req = urllib.request.Request(
        url, data=body or None, method="POST", headers={"Content-Type": ctype} if ctype else {}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (
        (
            f'--{b}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={b}"


def bad_requests(base: str, tmp: Path) -> list[dict]:
    """20 requests a careless client or a broken upload makes: each must get a 4xx and one line."""
    photo, speech = AVATAR.read_bytes(), SPEECH.read_bytes()
    big = b"\xff\xd8\xff" + os.urandom(33 * 2**20)
    cases = [
        ("avatar: an mp3", "/api/avatar", *multipart("file", "x.mp3", speech)),
        ("avatar: text", "/api/avatar", *multipart("file", "x.jpg", b"hello, not a picture")),
        ("avatar: empty", "/api/avatar", *multipart("file", "x.jpg", b"")),
        ("avatar: truncated jpeg", "/api/avatar", *multipart("file", "x.jpg", photo[:3000])),
        ("avatar: oversize", "/api/avatar", *multipart("file", "x.jpg", big)),
        ("avatar: wrong field", "/api/avatar", *multipart("photo", "x.jpg", photo)),
        ("avatar: not a form", "/api/avatar", photo, "image/jpeg"),
        ("avatar: no body", "/api/avatar", b"", None),
        (
            "avatar: broken form",
            "/api/avatar",
            b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\nabc',
            "multipart/form-data; boundary=zz",
        ),
        ("avatar: no face", "/api/avatar", *multipart("file", "x.png", _blank_png())),
        ("speak: a jpeg", "/api/speak", *multipart("file", "x.wav", photo)),
        ("speak: truncated mp3", "/api/speak", *multipart("file", "x.mp3", speech[:600])),
        ("speak: riff garbage", "/api/speak", *multipart("file", "x.wav", b"RIFF\x00\x00\x00\x00WAVEjunkjunk")),
        ("speak: oversize", "/api/speak", *multipart("file", "x.mp3", b"ID3" + os.urandom(17 * 2**20))),
        ("speak: wrong field", "/api/speak", *multipart("audio", "x.mp3", speech)),
        ("speak: json", "/api/speak", b"{}", "application/json"),
        ("offer: empty json", "/offer", b"{}", "application/json"),
        ("offer: not json", "/offer", b"v=0 nonsense", "text/plain"),
        (
            "offer: bad sdp",
            "/offer",
            json.dumps({"sdp": "v=0\r\nbroken", "type": "offer"}).encode(),
            "application/json",
        ),
        ("offer: an answer", "/offer", json.dumps({"sdp": "v=0\r\n", "type": "answer"}).encode(), "application/json"),
    ]
    out = []
    for name, path, body, ctype in cases:
        status, doc = post(base + path.lstrip("/"), body, ctype)
        msg = doc.get("error", "")
        out.append(
            {"case": name, "status": status, "error": msg, "ok": 400 <= status < 500 and bool(msg) and "\n" not in msg}
        )
    return out


def _blank_png() -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((240, 320, 3), 127, np.uint8))
    return buf.tobytes()


def lip_motion(metrics: dict, t0: float, t1: float, level: float, mic_level: float) -> dict:
    """Mouth motion in frames shown while the microphone spoke vs after a long silence."""
    mic = np.asarray(metrics["micLevel"] or [[0, 0]], np.float64)
    speaking, silent = [], []
    for t, m in metrics["motion"]:
        if not t0 <= t <= t1:
            continue
        w = mic[(mic[:, 0] >= t - 700) & (mic[:, 0] <= t - 100), 1]
        if not len(w):
            continue
        loud = np.mean(w >= mic_level)
        if loud >= 0.5:
            speaking.append(m)
        elif loud == 0:
            silent.append(m)
    sp, si = np.asarray(speaking), np.asarray(silent)
    return {
        "frames_speaking": len(sp),
        "frames_silent": len(si),
        "changed_pct_speaking_mean": round(float(sp.mean()), 2) if len(sp) else None,
        "changed_pct_silent_mean": round(float(si.mean()), 3) if len(si) else None,
        "silent_at_rest_fraction": round(float(np.mean(si < level)), 3) if len(si) else None,
        "speaking_moving_fraction": round(float(np.mean(sp >= level)), 3) if len(sp) else None,
    }


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="studio-bench-"))
    env = dict(os.environ)
    checkpoint_desc = None
    if args.engine != "procedural" and not args.checkpoint:
        args.checkpoint, checkpoint_desc = standin_checkpoint(tmp)
    wav = mic_wav(Path(args.mic_audio), tmp / "mic.wav")
    proc, url = start_server(args, env)
    doc: dict = {"engine": args.engine, "checkpoint": checkpoint_desc or args.checkpoint, "url": url}
    try:
        with sync_playwright() as p:
            flags = [
                "--use-fake-device-for-media-stream",
                "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--allow-loopback-in-peer-connection",
                "--disable-features=WebRtcHideLocalIpsWithMdns",
                "--autoplay-policy=no-user-gesture-required",
            ]
            if os.geteuid() == 0:
                flags.append("--no-sandbox")
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
            t_open = time.monotonic()
            page.goto(url + "?autostart=1")
            page.wait_for_function("window.studio && window.studio.metrics.connected", timeout=30_000)
            page.wait_for_function("window.studio.metrics.frames > 25", timeout=30_000)
            doc["connect_s"] = round(time.monotonic() - t_open, 2)
            base = url
            server0 = get_json(base + "api/stats")
            m0 = page.evaluate(
                "({t: performance.now(), d: window.studio.metrics.framesDecoded, f: window.studio.metrics.frames})"
            )
            w0 = time.monotonic()
            page.wait_for_timeout(args.seconds * 1000)  # the measurement window itself, not a sync
            m1 = page.evaluate(
                "({t: performance.now(), d: window.studio.metrics.framesDecoded, f: window.studio.metrics.frames})"
            )
            wall = time.monotonic() - w0
            server1 = get_json(base + "api/stats")
            metrics = page.evaluate("window.studio.metrics")
            span = (m1["t"] - m0["t"]) / 1000
            rtts = [r["ms"] for r in metrics["rtts"] if m0["t"] <= r["lips"] <= m1["t"]]
            per_s = [fps for t, fps in metrics["decodedFps"] if m0["t"] + 1000 <= t <= m1["t"]]
            e0, e1 = server0["session"]["engine"], server1["session"]["engine"]
            doc.update(
                {
                    "seconds": round(span, 1),
                    "decoded_fps": round((m1["d"] - m0["d"]) / span, 2),
                    "decoded_fps_per_second": {
                        "min": round(min(per_s), 1) if per_s else None,
                        "max": round(max(per_s), 1) if per_s else None,
                    },
                    "presented_fps": round((m1["f"] - m0["f"]) / span, 2),
                    "round_trip_ms": {
                        "n": len(rtts),
                        "p50": round(float(np.percentile(rtts, 50)), 1) if rtts else None,
                        "p95": round(float(np.percentile(rtts, 95)), 1) if rtts else None,
                        "max": round(max(rtts), 1) if rtts else None,
                        "speech_onsets": sum(m0["t"] <= t <= m1["t"] - 1000 for t in metrics["micOnsets"]),
                        "samples": [round(r, 1) for r in rtts],
                    },
                    "lips": lip_motion(metrics, m0["t"], m1["t"], args.motion_level, 0.02),
                    "engine_dropped_in_window": e1["dropped"] - e0["dropped"],
                    "engine_stats": {
                        k: e1[k] for k in ("fps_sustained", "processing_latency_ms", "audio_to_frame_ms", "dropped")
                    },
                    "webrtc": server1["session"]["webrtc"],
                    "server_cpu_percent": server1["process"]["cpu_percent"],
                    "server_rss_mb": server1["process"]["rss_mb"],
                    "wall_s": round(wall, 1),
                }
            )
            if args.screenshot:
                Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.screenshot)
            if args.checks:
                doc["checks"] = checks(base, page, tmp)
            doc["console_errors"] = list(console_errors)
            t_close = time.monotonic()
            page.close()
            freed = None
            while time.monotonic() - t_close < 15:
                if get_json(base + "api/stats")["sessions"] == 0:
                    freed = round(time.monotonic() - t_close, 2)
                    break
                time.sleep(0.1)
            doc["session_freed_after_close_s"] = freed
            browser.close()
    finally:
        proc.terminate()
        try:
            doc["server_exit"] = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            doc["server_exit"] = "killed"
        shutil.rmtree(tmp, ignore_errors=True)
    return doc


def checks(base: str, page, tmp: Path) -> dict:
    out: dict = {}
    sent0 = get_json(base + "api/stats")["session"]["webrtc"]["video_frames_sent"]
    out["bad_requests"] = bad_requests(base, tmp)
    s = get_json(base + "api/stats")
    out["alive_after_bad_requests"] = s["session"] is not None and s["session"]["webrtc"]["video_frames_sent"] > sent0
    # Speak a file, see the playout take over, interrupt it, see the microphone come back.
    body, ctype = multipart("file", "speech.mp3", SPEECH.read_bytes())
    status, doc = post(base + "api/speak", body, ctype)
    out["speak"] = {"status": status, **doc}
    out["mode_while_speaking"] = _wait_mode(base, "speech", 10)
    time.sleep(1.5)  # let it speak a while: interrupting at once would test nothing
    status, doc = post(base + "api/interrupt")
    t_int = time.monotonic()
    out["interrupt"] = {"status": status, **doc}
    out["mode_after_interrupt"] = _wait_mode(base, "mic", 10)
    out["back_to_mic_s"] = round(time.monotonic() - t_int, 2)
    # A new avatar: the mirrored photo, as an upload from the page's own form.
    import cv2

    mirrored = tmp / "mirrored.jpg"
    cv2.imwrite(str(mirrored), cv2.imread(str(AVATAR))[:, ::-1])
    page.set_input_files("#avatar-file", str(mirrored))
    page.click("#avatar-form button[type=submit]")
    page.wait_for_function("document.getElementById('message').textContent.startsWith('avatar ')", timeout=60_000)
    out["avatar_message"] = page.evaluate("document.getElementById('message').textContent")
    f0 = page.evaluate("window.studio.metrics.frames")
    page.wait_for_function(f"window.studio.metrics.frames > {f0} + 25", timeout=20_000)
    out["frames_after_avatar_switch"] = True
    return out


def _wait_mode(base: str, mode: str, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        s = get_json(base + "api/stats")["session"]
        last = s and s["mode"]
        if last == mode:
            return last
        time.sleep(0.05)
    return last


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--engine", default="wav2lip", choices=["wav2lip", "procedural"])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--avatar", default=str(AVATAR))
    ap.add_argument("--mic-audio", default=str(SPEECH), help="speech the fake microphone plays (looped)")
    ap.add_argument("--motion-level", type=float, default=2, help="the page's MOTION_LEVEL (%% of mouth pixels)")
    ap.add_argument("--checks", action="store_true", help="also bad requests, speak/interrupt, avatar switch")
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"bench_studio: expected Chromium at {CHROMIUM}, found none; apt-get install chromium", file=sys.stderr)
        return 2
    doc = run(args)
    if args.json:
        write_json(doc, args.json)
    else:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

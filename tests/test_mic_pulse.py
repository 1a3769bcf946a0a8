"""A real microphone path: speech played into a PulseAudio null sink, captured by sounddevice."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mediaio.audio import decode_audio
from servers import PulseAudio

SESSION = Path(__file__).with_name("mic_session.py")


@pytest.mark.slow
def test_speech_through_pulseaudio_reaches_the_engine_in_real_time(tmp_path, generator_ckpt, photo, speech_wav):
    try:
        pulse = PulseAudio(tmp_path / "pulse").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    speech = decode_audio(speech_wav)
    seconds = speech.duration_s + 1.0
    out = tmp_path / "mic.mkv"
    try:
        proc = subprocess.Popen(
            [sys.executable, str(SESSION), str(generator_ckpt), str(photo), str(out), str(seconds)],
            env=pulse.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "capturing", proc.stderr.read()
        player = pulse.play(speech_wav)
        summary = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=60) == 0
        player.wait(timeout=30)
    finally:
        pulse.stop()
    assert summary["source"].startswith("mic:"), summary
    # Paced by the device, not by us: frames come out at the output rate (loosely: the exact
    # figures are the benchmarks' business, and this machine may be busy with other tests).
    assert abs(summary["fps_sustained"] - 25) < 2.5, summary
    assert summary["frames"] >= (seconds - 1.0) * 25, summary
    assert summary["generated"] > 40, summary
    # What the engine heard is what was played (the recording carries the captured audio).
    # PulseAudio may start delivering only once something plays, so align by cross-correlation.
    import scipy.signal

    rec = decode_audio(out)  # the sinks get the input at 48 kHz, not the model's 16 kHz
    assert rec.sample_rate_hz == 48_000
    import soxr

    got, want = soxr.resample(rec.pcm[0], 48_000, speech.sample_rate_hz), speech.pcm[0]
    xc = scipy.signal.correlate(got, want, mode="full", method="fft")
    lag = int(np.argmax(np.abs(xc))) - (len(want) - 1)
    a, b = (got[lag:], want) if lag >= 0 else (got, want[-lag:])
    n = min(len(a), len(b))
    assert n > 0.9 * len(want)
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.95


def test_audio_passthrough_plays_the_input_200_ms_late_to_an_output_device(tmp_path, generator_ckpt, photo, speech_wav):
    """The engine plays the input through PulseAudio's null sink; parec records its monitor.

    The sink's head start of silence is the delay. The session marks it with a short tone 50 ms
    before its end, so in the recording the speech must begin 50 ms after the tone: the head start
    as the device played it (see passthrough_session for why the mark is not at its start)."""
    import scipy.signal

    from passthrough_session import MARK_BEFORE_MS, mark

    try:
        pulse = PulseAudio(tmp_path / "pulse").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    raw = tmp_path / "monitor.raw"
    try:
        with open(raw, "wb") as f:
            rec = subprocess.Popen(
                ["parec", "-d", "vspeaker.monitor", "--format=s16le", "--rate=16000", "--channels=1"],
                env=pulse.env,
                stdout=f,
            )
            proc = subprocess.run(
                [
                    sys.executable,
                    str(SESSION.with_name("passthrough_session.py")),
                    str(generator_ckpt),
                    str(photo),
                    str(speech_wav),
                    "200",
                ],
                env=pulse.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            rec.terminate()
            rec.wait()
    finally:
        pulse.stop()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["overruns"] == 0 and report["frames"] > 100
    heard = np.frombuffer(raw.read_bytes(), np.int16).astype(np.float32) / 32768
    want = decode_audio(speech_wav)
    assert want.sample_rate_hz == 16_000
    want = want.pcm[0]
    xc = scipy.signal.correlate(heard, want, mode="full", method="fft")
    lag = int(np.argmax(np.abs(xc))) - (len(want) - 1)
    assert lag >= 0
    seg = heard[lag : lag + len(want)]
    assert len(seg) > 0.9 * len(want)
    assert np.corrcoef(seg, want[: len(seg)])[0, 1] > 0.95  # what is heard is the input
    # The tone, heard just before the speech: the last 50 ms of a 200 ms head start.
    tone = mark(16_000)
    before = heard[max(0, lag - 16 * 400) : lag]
    xm = np.abs(scipy.signal.correlate(before, tone, mode="valid"))
    at = int(np.argmax(xm))
    energy = float(np.sum(tone * tone))
    assert xm[at] > 0.8 * energy, f"the tone in the head start was not heard ({xm[at] / energy:.2f} of it)"
    gap_ms = (len(before) - at) / 16
    assert abs(gap_ms - MARK_BEFORE_MS) <= 5, gap_ms


class StderrWatch:
    """Collects a child's stderr as it comes, so the test can wait for a message (with a timeout)."""

    def __init__(self, proc):
        import threading

        self.text, self._cv = "", threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, f):
        while chunk := f.read(1):
            with self._cv:
                self.text += chunk
                self._cv.notify_all()

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: needle in self.text, timeout_s)

    def wait_for_frames(self, timeout_s: float) -> bool:
        """Until a status line reports frames made from the microphone's audio. (The first status
        line comes a second after the start whatever the input does: " 0.0 fps" while the stream
        is still opening, or open but not yet delivering.)"""
        import re

        with self._cv:
            return self._cv.wait_for(
                lambda: any(float(v) > 0 for v in re.findall(r"(\d+\.\d) fps", self.text)), timeout_s
            )

    def done(self) -> str:
        self._thread.join(timeout=10)
        return self.text


def test_audio_server_gone_mid_run_one_line_then_recovery_when_it_returns(tmp_path, photo):
    """The PulseAudio server behind the microphone is killed mid-run and started again: one line
    says the input is gone, idle frames go on at 25 fps (silence stands in for the input), one
    line says it is back, capture resumes, and the run ends normally when its duration is over."""
    try:
        pulse = PulseAudio(tmp_path / "pulse").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    out, stats = tmp_path / "mic.mkv", tmp_path / "stats.json"
    seconds = 8
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            "mic",
            "--engine",
            "procedural",
            "--to",
            str(out),
            "--duration",
            str(seconds),
            "--stats-json",
            str(stats),
        ],
        cwd=SESSION.parent.parent,
        env=pulse.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = StderrWatch(proc)
    try:
        assert watch.wait_for_frames(60), watch.text  # the microphone delivers and frames are made
        pulse.stop()
        assert watch.wait_for("stopped delivering audio", 10), watch.text
        pulse.start()
        assert watch.wait_for("is back after", 10), watch.text
        assert proc.wait(timeout=60) == 0, watch.done()
    finally:
        if proc.poll() is None:
            proc.kill()
        pulse.stop()
    err = watch.done()
    lines = err.splitlines()
    assert "Traceback" not in err and not any(ln.startswith(("Expression '", "ALSA lib")) for ln in lines), err
    gone = [ln for ln in lines if "stopped delivering audio" in ln]
    back = [ln for ln in lines if "is back after" in ln]
    # Each a warning on a line of its own (never run on from the status line).
    said = "WARNING realtime.sources.mic: mic:"
    assert len(gone) == 1 and gone[0].startswith(said) and "reopening every 1 s" in gone[0]
    assert len(back) == 1 and back[0].startswith(said) and back[0].endswith("capturing again")
    s = json.loads(stats.read_text())
    # The timeline never stopped: frames for the whole duration, no long gap at the loss or return.
    assert s["frames"] >= (seconds - 0.5) * 25 and s["dropped"] == 0, s
    assert s["interframe_gap_ms"]["max"] < 500, s
    from mediaio.audio import decode_audio

    rec = decode_audio(out)
    assert abs(rec.duration_s - seconds) < 0.5


def test_audio_server_gone_for_good_stops_the_session_in_one_line(tmp_path, photo):
    try:
        pulse = PulseAudio(tmp_path / "pulse").start()
    except RuntimeError as e:
        pytest.fail(str(e))
    out = tmp_path / "mic.mkv"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lipsync.cli",
            "live",
            "--avatar",
            str(photo),
            "--audio",
            "mic",
            "--engine",
            "procedural",
            "--to",
            str(out),
            "--mic-give-up-s",
            "2",
        ],
        cwd=SESSION.parent.parent,
        env=pulse.env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watch = StderrWatch(proc)
    try:
        # Only once the microphone delivers: stopping the server earlier (the first status line
        # comes at 1 s, often before any audio) gave a recording of the 2 s of silence alone, and
        # sometimes a stream that never opened.
        assert watch.wait_for_frames(60), watch.text
        pulse.stop()  # and it never comes back
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = watch.done()
    assert code == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: mic:default: no audio input for 2 s (the device or the audio "
        "server went away and did not come back); the session stops"
    )
    import av

    from mediaio.audio import decode_audio

    # The recording is finalised and holds all the audio that arrived: what was captured, then
    # the 2 s of silence while it waited (what was still queued at the give-up included), with
    # video to its end.
    audio_s = decode_audio(out).duration_s
    assert audio_s > 2
    with av.open(str(out)) as c:
        video_end_s = max(float(f.pts * f.time_base) for f in c.decode(video=0)) + 1 / 25
    assert abs(video_end_s - audio_s) <= 2 / 25, (video_end_s, audio_s)

"""Real servers for tests, started from a temp dir: nginx with the RTMP module, PulseAudio."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout_s: float, what: str):
    """Poll a real condition (a port accepting, a device appearing) until it holds."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while time.monotonic() < deadline:
        if cond():
            return
        pause.wait(0.02)
    raise TimeoutError(f"{what} did not happen within {timeout_s} s")


def udp_bound(port: int) -> bool:
    """Whether a local UDP socket is bound to `port` (a viewer listening), from the kernel's table."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(row.split()[1].rsplit(":", 1)[1], 16) == port for row in rows):
            return True
    return False


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class NginxRtmp:
    def __init__(self, workdir: Path, port: int | None = None):
        if not (shutil.which("nginx") and os.path.exists(RTMP_MODULE)):
            raise RuntimeError("nginx with the RTMP module is not installed (apt-get install nginx libnginx-mod-rtmp)")
        self.dir, self.port = workdir, port or free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""load_module {RTMP_MODULE};
daemon off; master_process off; worker_processes 1;
pid {self.dir}/nginx.pid; error_log {self.dir}/logs/error.log warn;
events {{ worker_connections 64; }}
rtmp {{ server {{ listen 127.0.0.1:{self.port}; chunk_size 4096;
  application live {{ live on; record off; wait_key on; }} }} }}
""")
        self.proc = None

    def url(self, name: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def start(self) -> NginxRtmp:
        self.proc = subprocess.Popen(
            ["nginx", "-c", str(self.conf), "-p", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: _accepts(self.port), 10, "nginx-rtmp listening")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        wait_for(lambda: not _accepts(self.port), 5, "nginx-rtmp closing its port")


class PulseAudio:
    """A private PulseAudio server whose null sink's monitor is the default microphone."""

    def __init__(self, workdir: Path):
        if not shutil.which("pulseaudio"):
            raise RuntimeError("pulseaudio is not installed (apt-get install pulseaudio pulseaudio-utils)")
        self.dir = workdir
        (self.dir / "xdg").mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "xdg", 0o700)
        (self.dir / "pulse.pa").write_text(
            "load-module module-native-protocol-unix\n"
            "load-module module-null-sink sink_name=vspeaker rate=16000 channels=1\n"
            "set-default-sink vspeaker\nset-default-source vspeaker.monitor\n"
        )
        self.env = dict(os.environ, HOME=str(self.dir), XDG_RUNTIME_DIR=str(self.dir / "xdg"))
        self.proc = None

    def start(self) -> PulseAudio:
        self.proc = subprocess.Popen(
            ["pulseaudio", "-n", "-F", str(self.dir / "pulse.pa"), "--exit-idle-time=-1", "--daemonize=no"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode == 0,
            10,
            "pulseaudio answering",
        )
        return self

    def play(self, wav: Path) -> subprocess.Popen:
        return subprocess.Popen(["paplay", str(wav)], env=self.env)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

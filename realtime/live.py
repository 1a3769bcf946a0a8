"""Assembling a live session from user-level choices (the CLI and the Python API share this)."""

from __future__ import annotations

import logging
from pathlib import Path

from models.errors import LipsyncError
from models.face_model import cache_dir
from realtime import heap, threads
from realtime.avatar import AvatarConfig, load_avatar
from realtime.camera_avatar import CameraAvatar
from realtime.compositor import first_shown_row
from realtime.config import EngineConfig
from realtime.engine import Engine
from realtime.generator import RuntimeConfig, ladder_samples, load_live_generator, model_face_size
from realtime.playout import Pacing, Playout, PlayoutConfig
from realtime.procedural import ProceduralRenderer
from realtime.renderer import Wav2LipRenderer
from realtime.sinks.base import NullSink
from realtime.sinks.encoding import LiveVideoEncoding
from realtime.sinks.file import FORMATS
from realtime.sinks.preview import PreviewSink
from realtime.sinks.recorder import FileSink
from realtime.sinks.stream import StreamSink
from realtime.sinks.vcam import VcamSink
from realtime.sources.camera import CameraCapture
from realtime.sources.file import FileSource
from realtime.sources.mic import MicSource

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("wav2lip_gan.pth", "wav2lip.pth")


def checkpoint_folders() -> list[Path]:
    """Where a checkpoint is looked for when none is given: `checkpoints/` in the working folder,
    then in the user's cache folder. Never beside the package: an installed package lives in
    site-packages, where no user puts weights."""
    return [Path.cwd() / "checkpoints", cache_dir() / "checkpoints"]


def default_checkpoint() -> str:
    folders = checkpoint_folders()
    for folder in folders:
        for name in CHECKPOINT_NAMES:
            if (folder / name).is_file():
                return str(folder / name)
    log.debug("no %s in %s", " or ".join(CHECKPOINT_NAMES), ", ".join(map(str, folders)))
    raise LipsyncError(
        "--checkpoint",
        "a Wav2Lip generator checkpoint",
        "none given and none in " + " or ".join(map(str, folders)),
        f"pass --checkpoint PATH, or put {CHECKPOINT_NAMES[0]} in one of those folders",
    )


def default_runtime() -> RuntimeConfig:
    """The precision ladder decides (see export.precision), with the live thread budget."""
    return RuntimeConfig(
        runtime="auto", precision="auto", device="auto", intra_op_threads=threads.current().inference_threads
    )


def make_sink(target: str, fps: float, sample_rate_hz: int = 48_000, encoding=None):
    """`encoding`: the live H.264 settings (realtime.sinks.encoding.LiveVideoEncoding) for streams
    and recordings; None: the defaults."""
    encoding = encoding or LiveVideoEncoding()
    if target == "null":
        return NullSink()
    if target == "vcam":
        return VcamSink(fps)
    if target == "preview":
        return PreviewSink()
    if "://" in target:
        try:
            return StreamSink(target, fps, sample_rate_hz, encoding)
        except ValueError:
            raise LipsyncError(
                "--to",
                "vcam, preview, null, a file, or an rtmp:// udp:// srt:// URL",
                repr(target),
                "check the URL scheme",
            ) from None

    if Path(target).suffix.lower() not in FORMATS:
        raise LipsyncError(
            "--to",
            "vcam, preview, null, an rtmp/udp/srt URL, or a file ending in " + ", ".join(FORMATS),
            repr(target),
            "pick one of those",
        )
    return FileSink(target, fps, sample_rate_hz, encoding)


def make_source(audio: str, loop: bool = False, mic_device=None, mic_give_up_after_s: float = 60.0):
    if audio == "mic":
        return MicSource(mic_device, give_up_after_s=mic_give_up_after_s)
    return FileSource(audio, loop=loop)


def choose_engine(engine: str, checkpoint: str | None) -> tuple[str, str | None]:
    """`auto`: Wav2Lip when a checkpoint is given or found (`checkpoint_folders`), else procedural."""
    if engine == "procedural":
        return "procedural", None
    if engine == "wav2lip":
        return "wav2lip", checkpoint or default_checkpoint()
    if engine != "auto":
        raise LipsyncError("--engine", "auto, wav2lip or procedural", repr(engine), "pick one of those")
    if checkpoint:
        return "wav2lip", checkpoint
    try:
        return "wav2lip", default_checkpoint()
    except LipsyncError:
        return "procedural", None


def build_engine(
    avatar: str,
    sinks: list,
    checkpoint: str | None = None,
    runtime: RuntimeConfig | None = None,
    cfg: EngineConfig = EngineConfig(),
    loop: str = "forward",
    clock=None,
    engine: str = "auto",
) -> Engine:
    """The capture engine (microphone-like input: the audio is the clock, late frames skipped)."""
    av, renderer = _avatar_and_renderer(avatar, sinks, checkpoint, runtime, cfg, loop, engine)
    return Engine(av, renderer, sinks, cfg, clock)


def build_playout(
    avatar: str,
    sinks: list,
    checkpoint: str | None = None,
    runtime: RuntimeConfig | None = None,
    cfg: EngineConfig = EngineConfig(),
    pcfg=None,
    loop: str = "forward",
    clock=None,
    engine: str = "auto",
    reader: bool = True,
    pacing: Pacing = Pacing.PLAYOUT,
):
    """Playout for pushed speech (TTS, voice agents): an output clock, idle frames, interrupts.
    Sinks should take audio at `pcfg.output_rate_hz` (48 kHz by default). `pacing`:
    Pacing.CONSUMER when the reader of `frames()`/`recv()` owns the clock (a voice-agent
    transport; then no sinks), Pacing.PLAYOUT when the playout paces the sinks."""
    if avatar.startswith("camera:"):
        raise LipsyncError(
            "--avatar",
            "a photo or a video for playout",
            repr(avatar),
            "a live camera avatar is for capture mode (--audio mic)",
        )
    av, renderer = _avatar_and_renderer(avatar, sinks, checkpoint, runtime, cfg, loop, engine)
    return Playout(av, renderer, sinks, cfg, pcfg or PlayoutConfig(), clock, deliver_to_reader=reader, pacing=pacing)


def build_renderer(
    avatar: str,
    checkpoint: str | None = None,
    runtime: RuntimeConfig | None = None,
    cfg: EngineConfig = EngineConfig(),
    loop: str = "forward",
    engine: str = "auto",
):
    """(avatar, renderer) for `avatar` with no sinks: for hosts that build engines themselves."""
    return _avatar_and_renderer(avatar, [], checkpoint, runtime, cfg, loop, engine)


def _avatar_and_renderer(avatar, sinks, checkpoint, runtime, cfg, loop, engine):
    kind, checkpoint = choose_engine(engine, checkpoint)
    if avatar.startswith("camera:"):
        spec = avatar.removeprefix("camera:")
        av = CameraAvatar(CameraCapture(int(spec) if spec.isdigit() else spec), fps=cfg.fps)
    else:
        av = load_avatar(AvatarConfig(avatar, loop=loop, fps=cfg.fps))
        heap.release_freed()  # the decode and tracking pass over every frame left freed memory behind
    # Open outputs before the (possibly slow, first-use) export: a missing device or an
    # unreachable server is reported at once.
    for sink in sinks:
        if hasattr(sink, "prepare"):
            sink.prepare(*av.size)
    if kind == "procedural":
        if engine == "auto":
            log.info(
                "engine: procedural (no Wav2Lip checkpoint given or in %s)", " or ".join(map(str, checkpoint_folders()))
            )
        renderer = ProceduralRenderer(av.keypoints(), meshes=av.meshes())
        heap.release_freed()
        return av, renderer
    runtime = runtime or default_runtime()
    first_row, samples = 0, None
    if not avatar.startswith("camera:"):
        av.set_face_size(model_face_size(checkpoint, runtime))
        if cfg.blend == "feather":
            first_row = first_shown_row(av.boxes, av.paste_points(), av.cfg.face_size)
        samples = ladder_samples(avatar, av)
    gen = load_live_generator(checkpoint, runtime, first_row=first_row, avatar=samples)
    if engine == "auto":
        log.info(f"engine: wav2lip ({Path(checkpoint).name})")
    av.attach_features(gen, f"{gen.name}:{checkpoint}")

    heap.release_freed()  # session building (graph optimisation) and feature encoding freed much
    return av, Wav2LipRenderer(gen, av, cfg.blend)

"""The precision ladder: for this checkpoint on this machine, the fastest decoder that keeps the picture.

Candidates are built in order of expected speed (int8, mixed int8/bf16, bf16, fp16 on a GPU,
fp32), each is run by the runtime that will run it live, timed on this machine (batch 1, the live
path's decoder), and judged by the quality gate; the fastest that passes is used. A reduced
precision that fails is never fatal (fp32 is always a candidate, and only a failing fp32 export
is an error). Pinned `--runtime/--precision/--device` restrict the candidates; a pinned choice
that fails the gate is refused with the measured figures, never swapped for another quietly.

The gate: PSNR against the fp32 decoder >= 30 dB on average and >= 27 dB on the worst frame,
on the rows the compositor shows, over inputs kept apart from calibration (another face, other
voices: `export.samples.heldout_set`). The decision is recorded beside the exports, keyed by the
machine's fingerprint, the rows computed, the pins and the calibration avatar, so the next start
neither rebuilds nor re-measures.

A new avatar on a checkpoint already laddered here (same machine, rows, pins) first tries the
decoder chosen before: the gate is checked on the new avatar's own crops (with the held-out
voices) against the fp32 decoder, a second or so; when it passes, that choice is recorded for
the new avatar too, and only when it fails does the ladder run again, calibrated on the new
face. `lookup` is all of this that needs no torch and builds nothing; the live path runs the rest
(`choose`) in a child process (export.ladder_process).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from export import machine
from export.cache import checkpoint_sha256, ensure_exported, entry_dir, exported
from export.metadata import SKIPS, decoder_variant, graph_face_size
from export.quantize import quantize_openvino
from export.runtime import RuntimeConfig, graph_precision, make_runner
from export.samples import avatar_check_set, calibration_set, heldout_set
from models.errors import LipsyncError

log = logging.getLogger(__name__)

GATE_MEAN_DB = 30.0
GATE_WORST_DB = 27.0
# The reference's hard paste is judged on the lower half of the face (rows S/2.., the mouth).
HELDOUT_SAMPLES = 32
CALIBRATION_SAMPLES = 48
VALIDATION_SAMPLES = 24
TIMED_RUNS = 30
AVATAR_CHECK_SAMPLES = 16  # the reuse check on a new avatar's crops: a second, not a ladder
LADDER_VERSION = 1  # bump when the gate or the recipes change: recorded choices are redone


@dataclass(frozen=True)
class Candidate:
    runtime: str
    precision: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}" + (f" on {self.device}" if self.device != "cpu" else "")


@dataclass
class Trial:
    runtime: str
    precision: str
    device: str
    status: str  # ok | refused | skipped
    reason: str = ""
    ms_per_frame: float | None = None
    psnr_db_shown_mean: float | None = None
    psnr_db_shown_worst: float | None = None
    decoder_file: str | None = None
    chosen: bool = False


@dataclass(frozen=True)
class AvatarSamples:
    """The user's avatar as calibration input: its crops (the model's face size) and a key naming them."""

    key: str
    crops: np.ndarray


@dataclass
class Choice:
    runtime: str
    precision: str
    device: str
    first_row: int
    encoder_path: Path
    decoder_path: Path
    trials: list[Trial] = field(default_factory=list)
    recorded: bool = False  # read back from the cache rather than measured now

    @property
    def chosen_trial(self) -> Trial:
        return next(t for t in self.trials if t.chosen)


def candidates(pins, has_openvino: bool, has_bf16: bool, gpu: list[str], torch_cuda: bool = False) -> list[Candidate]:
    """In order of expected speed; restricted to what `pins` (runtime/precision/device) allow.
    `gpu`: ONNX Runtime's usable GPU providers; `torch_cuda`: torch can run on a CUDA device."""
    out: list[Candidate] = []
    if pins.device == "tensorrt" or (pins.device == "auto" and "TensorrtExecutionProvider" in gpu):
        out.append(Candidate("onnxruntime", "fp16", "tensorrt"))
    if pins.device == "tensorrt":
        out.append(Candidate("onnxruntime", "fp32", "tensorrt"))
    if pins.device == "cuda" or (pins.device == "auto" and gpu):
        out += [Candidate("onnxruntime", "fp16", "cuda"), Candidate("onnxruntime", "fp32", "cuda")]
    if torch_cuda and pins.device in ("auto", "cuda"):
        out.append(Candidate("torch-cuda", "fp16", "cuda"))
    if pins.device in ("auto", "cpu"):
        if has_openvino:
            out += [Candidate("openvino", "int8"), Candidate("openvino", "int8-mixed")]
            if has_bf16:
                out.append(Candidate("openvino", "bf16"))
        else:
            out.append(Candidate("onnxruntime", "int8"))
        out.append(Candidate("onnxruntime", "fp32"))
        if has_openvino:
            out.append(Candidate("openvino", "fp32"))
    return [c for c in out if pins.runtime in ("auto", c.runtime) and pins.precision in ("auto", c.precision)]


def psnr_per_frame(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    err = ((out.astype(np.float64) - ref.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(1.0 / np.maximum(err, 1e-20))


def _record_path(sha: str, key: str) -> Path:
    return entry_dir(sha) / f"ladder-{key}.json"


def _conditions(cfg, first_row: int, shown_from_row: int) -> dict:
    """What a recorded choice depends on besides the avatar and the gate."""
    return {
        "v": LADDER_VERSION,
        "machine": machine.fingerprint(),
        "first_row": first_row,
        "shown": shown_from_row,
        "pins": [cfg.runtime, cfg.precision, cfg.device],
    }


def _key(what: dict) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def _record_key(cfg, first_row: int, shown_from_row: int, avatar: AvatarSamples | None) -> str:
    return _key(
        {
            **_conditions(cfg, first_row, shown_from_row),
            "avatar": avatar.key if avatar else None,
            "gate": [GATE_MEAN_DB, GATE_WORST_DB],
        }
    )


def _family_key(cfg, first_row: int, shown_from_row: int) -> str:
    """What a record for another avatar must share to be worth a check on this one: everything in
    `_record_key` but the avatar and the gate (the check itself applies today's gate)."""
    return _key(_conditions(cfg, first_row, shown_from_row))


def _read_record(path: Path, sha: str, first_row: int, fp32: dict) -> Choice | None:
    try:
        rec = json.loads(path.read_text())
        trials = [Trial(**t) for t in rec["trials"]]
        chosen = next(t for t in trials if t.chosen)
        decoder = path.parent / chosen.decoder_file
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
    if not decoder.is_file():
        return None
    return Choice(
        chosen.runtime, chosen.precision, chosen.device, first_row, fp32["face_encoder"], decoder, trials, recorded=True
    )


def _write_record(record: Path, sha: str, first_row: int, shown_from_row: int, family: str, avatar, trials, **extra):
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {
                "checkpoint_sha256": sha,
                "first_row": first_row,
                "shown_from_row": shown_from_row,
                "family": family,
                "avatar": avatar.key if avatar else None,
                "machine": machine.summary(),
                "trials": [asdict(t) for t in trials],
                **extra,
            },
            indent=1,
        )
    )
    os.replace(tmp, record)


def _shown_from(first_row: int, shown_from_row: int | None, face_size: int) -> int:
    """The first row a viewer sees: the caller's, else the cropped decoder's first, else the lower
    half of the face that the reference's hard paste shows."""
    if shown_from_row is not None:
        return shown_from_row
    return first_row or face_size // 2


def lookup(
    checkpoint,
    cfg,
    first_row: int = 0,
    avatar: AvatarSamples | None = None,
    shown_from_row: int | None = None,
    reuse: bool = True,
) -> Choice | None:
    """The choice for `checkpoint` without exporting, building or laddering anything (no torch,
    no NNCF): this avatar's record, or (`reuse`) the decoder chosen earlier for another avatar
    once the gate passes on this one's crops. None: the ladder must run (`choose`)."""
    sha = checkpoint_sha256(checkpoint, cfg.face_size_px)
    fp32 = exported(sha, "split", "fp32", first_row)
    if fp32 is None:
        return None
    shown_from_row = _shown_from(first_row, shown_from_row, graph_face_size(fp32["face_encoder"]))
    return _recorded(sha, cfg, first_row, shown_from_row, avatar, fp32, reuse)


def _recorded(sha, cfg, first_row, shown_from_row, avatar, fp32, reuse) -> Choice | None:
    record = _record_path(sha, _record_key(cfg, first_row, shown_from_row, avatar))
    got = _read_record(record, sha, first_row, fp32) if record.is_file() else None
    if got is not None:
        t = got.chosen_trial
        log.info(
            f"precision: {t.runtime} {t.precision} ({t.ms_per_frame:.1f} ms/frame, "
            f"{t.psnr_db_shown_mean:.1f} dB; chosen earlier on this machine)"
        )
        return got
    if not reuse or avatar is None:
        return None
    family = _family_key(cfg, first_row, shown_from_row)
    earlier = _family_records(sha, family)
    if not earlier:
        return None
    prev = _read_record(earlier[0], sha, first_row, fp32)
    if prev is None:
        return None
    t = prev.chosen_trial
    threads = cfg.intra_op_threads or machine.cores()
    try:
        mean, worst = _avatar_check(fp32, prev, avatar, shown_from_row - first_row, threads)
    except Exception as e:  # like a failing candidate: never fatal, the ladder decides instead
        log.info(f"precision: checking {t.runtime} {t.precision} on this avatar failed: {_one_line(e)}; choosing again")
        return None
    if not (mean >= GATE_MEAN_DB and worst >= GATE_WORST_DB):
        log.info(
            f"precision: {t.runtime} {t.precision}, chosen earlier on this machine, keeps {mean:.1f} dB mean / "
            f"{worst:.1f} dB worst frame on this avatar, under {GATE_MEAN_DB:g} / {GATE_WORST_DB:g}: "
            "choosing again for it"
        )
        return None
    log.info(
        f"precision: {t.runtime} {t.precision} ({t.ms_per_frame:.1f} ms/frame; chosen earlier on this machine, "
        f"{mean:.1f} dB mean / {worst:.1f} dB worst frame on this avatar)"
    )
    _write_record(
        record,
        sha,
        first_row,
        shown_from_row,
        family,
        avatar,
        prev.trials,
        reused_from=earlier[0].name,
        psnr_db_on_avatar=[round(mean, 2), round(worst, 2)],
    )
    return prev


def _family_records(sha: str, family: str) -> list[Path]:
    """Records of this checkpoint made for other avatars under the same conditions, newest first."""
    found = []
    for path in entry_dir(sha).glob("ladder-*.json"):
        try:
            if json.loads(path.read_text()).get("family") == family:
                found.append((path.stat().st_mtime_ns, path))
        except (OSError, ValueError, AttributeError):
            continue  # unreadable, or being replaced: not one to reuse
    return [p for _, p in sorted(found, reverse=True)]


def _avatar_check(fp32: dict, choice: Choice, avatar: AvatarSamples, shown: int, threads: int) -> tuple[float, float]:
    """The gate's PSNR (mean, worst frame) of `choice`'s decoder against the fp32 one, on the
    avatar's own crops with the held-out voices, on the rows shown."""
    variant = decoder_variant(choice.first_row)
    ref_cfg = RuntimeConfig(runtime="onnxruntime", precision="fp32", device="cpu", intra_op_threads=threads)
    samples = avatar_check_set(avatar.crops, AVATAR_CHECK_SAMPLES)
    # A photo avatar has one crop: encode each distinct face once.
    first: dict[bytes, int] = {}
    which = [first.setdefault(f.tobytes(), len(first)) for f in samples.faces]
    faces = samples.faces[[which.index(k) for k in range(len(first))]]
    skips = [s[which] for s in make_runner(fp32["face_encoder"], ref_cfg)({"face": faces})]
    feeds = [
        {"mel": samples.mels[i : i + 1], **{k: s[i : i + 1] for k, s in zip(SKIPS, skips)}} for i in range(len(samples))
    ]
    ref = make_runner(fp32[variant], ref_cfg)({"mel": samples.mels, **dict(zip(SKIPS, skips))})[0]
    cfg = RuntimeConfig(choice.runtime, choice.precision, choice.device, intra_op_threads=threads)
    run = make_runner(choice.decoder_path, cfg)
    out = np.concatenate([run(f)[0] for f in feeds])  # batch 1, as live (an int8 IR is static batch 1)
    per = psnr_per_frame(out[:, :, shown:], ref[:, :, shown:])
    return float(per.mean()), float(per.min())


def choose(
    checkpoint,
    cfg,
    first_row: int = 0,
    avatar: AvatarSamples | None = None,
    shown_from_row: int | None = None,
    remeasure: bool = False,
    exhaustive: bool = False,
    reuse: bool = True,
) -> Choice:
    """Run (or read back) the ladder for `checkpoint` and return the chosen decoder.

    `exhaustive` (benchmarks) also builds and measures the candidates the ladder would skip once a
    faster one passed; the choice stays the one the plain ladder makes. `reuse`: try the decoder
    chosen for another avatar first (see `lookup`); off where that was just tried.
    """
    sha = checkpoint_sha256(checkpoint, cfg.face_size_px)
    fp32 = ensure_exported(checkpoint, "split", "fp32", first_row=first_row, sha=sha, face_size_px=cfg.face_size_px)
    shown_from_row = _shown_from(first_row, shown_from_row, graph_face_size(fp32["face_encoder"]))
    if not remeasure:
        got = _recorded(sha, cfg, first_row, shown_from_row, avatar, fp32, reuse)
        if got is not None:
            return got
    choice = _run_ladder(checkpoint, sha, cfg, first_row, shown_from_row, fp32, avatar, exhaustive)
    record = _record_path(sha, _record_key(cfg, first_row, shown_from_row, avatar))
    _write_record(
        record, sha, first_row, shown_from_row, _family_key(cfg, first_row, shown_from_row), avatar, choice.trials
    )
    return choice


class _Inputs:
    """Held-out feeds with fp32 references (every candidate is judged on them), and the
    calibration and validation feeds, made only when an int8 build actually needs them."""

    def __init__(self, fp32: dict, first_row: int, avatar: AvatarSamples | None):
        import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

        self._enc = ort.InferenceSession(str(fp32["face_encoder"]), providers=["CPUExecutionProvider"])
        self._dec = ort.InferenceSession(str(fp32[decoder_variant(first_row)]), providers=["CPUExecutionProvider"])
        self._crops = avatar.crops if avatar is not None else None
        self.face_size = graph_face_size(fp32["face_encoder"])
        self.heldout = self._feeds(heldout_set(HELDOUT_SAMPLES, size=self.face_size))
        self.heldout_ref = [self._dec.run(None, f)[0] for f in self.heldout]

    def _feeds(self, samples) -> list[dict]:
        skips = self._enc.run(None, {"face": samples.faces})
        return [
            {"mel": samples.mels[i : i + 1], **{k: s[i : i + 1] for k, s in zip(SKIPS, skips)}}
            for i in range(len(samples))
        ]

    @cached_property
    def calibration(self) -> list[dict]:
        return self._feeds(calibration_set(CALIBRATION_SAMPLES, self._crops, seed=1, size=self.face_size))

    @cached_property
    def validation(self) -> list[dict]:
        return self._feeds(calibration_set(VALIDATION_SAMPLES, self._crops, seed=9, size=self.face_size))

    @cached_property
    def validation_ref(self) -> list[np.ndarray]:
        return [self._dec.run(None, f)[0] for f in self.validation]


def _build(
    c: Candidate,
    checkpoint,
    sha: str,
    first_row: int,
    fp32: dict,
    inputs: _Inputs,
    avatar: AvatarSamples | None,
    face_size_px: int = 0,
) -> Path:
    """The decoder file candidate `c` runs (built now if it is not in the cache)."""
    variant = decoder_variant(first_row)
    if c.runtime == "openvino" and c.precision in ("int8", "int8-mixed"):
        calib = avatar.key[:12] if avatar else "face-a"
        final = entry_dir(sha) / f"{variant}-ov-{c.precision}-{calib}.xml"
        if not (final.is_file() and final.with_suffix(".bin").is_file()):
            log.info(
                f"  building {c.label} (NNCF, calibrated on {'your avatar' if avatar else 'the shipped photo'}) ..."
            )
            tmp = final.with_name(f".{final.stem}.{os.getpid()}.partial.xml")
            try:
                quantize_openvino(
                    fp32[variant], tmp, inputs.calibration, c.precision, inputs.validation, inputs.validation_ref
                )
                os.replace(tmp.with_suffix(".bin"), final.with_suffix(".bin"))
                os.replace(tmp, final)
            finally:
                tmp.unlink(missing_ok=True)
                tmp.with_suffix(".bin").unlink(missing_ok=True)
        return final
    if c.runtime == "torch-cuda":
        from export.torch_cuda import write_descriptor  # torch: only on a machine where it runs on a GPU

        dst = entry_dir(sha) / f"{variant}-torch-cuda-{c.precision}.json"
        return write_descriptor(dst, checkpoint, sha, face_size_px, variant)
    if c.precision in ("fp32", "bf16"):
        return fp32[variant]
    # ONNX Runtime int8 (the ConvTranspose-free rewrite) and fp16 for GPUs: export.quantize's builds,
    # whose own checks refuse a broken result; the gate below then judges it like the rest.
    precision = graph_precision(RuntimeConfig(runtime=c.runtime, precision=c.precision))
    return ensure_exported(checkpoint, "split", precision, first_row=first_row, sha=sha, face_size_px=face_size_px)[
        variant
    ]


def _measure(path: Path, c: Candidate, inputs: _Inputs, shown: int, threads: int):
    run = make_runner(
        path, RuntimeConfig(runtime=c.runtime, precision=c.precision, device=c.device, intra_op_threads=threads)
    )
    out = np.concatenate([run(f)[0] for f in inputs.heldout])
    ref = np.concatenate(inputs.heldout_ref)
    per = psnr_per_frame(out[:, :, shown:], ref[:, :, shown:])
    f = inputs.heldout[0]
    for _ in range(3):
        run(f)
    times = []
    for _ in range(TIMED_RUNS):
        t = time.perf_counter()
        run(f)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000), float(per.mean()), float(per.min())


def _one_line(e: Exception, limit: int = 200) -> str:
    if isinstance(e, LipsyncError):
        return str(e)
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _run_ladder(checkpoint, sha, cfg, first_row, shown_from_row, fp32, avatar, exhaustive=False) -> Choice:
    has_ov = "openvino" in machine.runtime_versions() and "nncf" in machine.runtime_versions()
    if cfg.runtime == "openvino" and not has_ov:
        raise LipsyncError(
            "--runtime openvino",
            "the openvino and nncf packages",
            "they are not installed",
            "pip install 'lipsync-rt[openvino]' or use --runtime auto",
        )
    gpu, gpu_reason = machine.usable_gpu_providers()
    torch_reason = machine.torch_cuda_reason() if cfg.runtime in ("auto", "torch-cuda") else "not asked for"
    if cfg.device == "auto" and not gpu and (gpu_reason or find_spec("torch")) and torch_reason != "not asked for":
        # Something GPU-shaped is installed but cannot run here: say so once, then the CPU ladder.
        log.info(f"GPU: none usable ({gpu_reason or 'no onnxruntime-gpu'}; torch: {torch_reason}); the CPU ladder")
    cands = candidates(cfg, has_ov, machine.has_bf16(), gpu, torch_cuda=torch_reason is None)
    if not cands:
        raise LipsyncError(
            "--runtime/--precision/--device",
            "a combination this machine can run",
            f"{cfg.runtime}/{cfg.precision}/{cfg.device}",
            "bf16 and int8-mixed need --runtime openvino, fp16 a GPU; or leave them on auto",
        )
    info = machine.summary()
    log.info(
        f"choosing the generator's precision for this machine ({info['cpu']}, {info['cores']} cores, "
        f"{' '.join(info['features']) or 'no AVX-512'}): gate >= {GATE_MEAN_DB:g} dB mean, "
        f">= {GATE_WORST_DB:g} dB worst frame, rows {shown_from_row}-{graph_face_size(fp32['face_encoder']) - 1}, "
        "held-out face and voices"
    )
    inputs = _Inputs(fp32, first_row, avatar)
    shown = shown_from_row - first_row
    threads = cfg.intra_op_threads or machine.cores()
    trials: list[Trial] = []
    eligible: list[Trial] = []  # what the plain ladder measures; the choice is made among these
    for c in cands:
        trial = Trial(c.runtime, c.precision, c.device, "skipped")
        trials.append(trial)
        passed_before = [t for t in eligible if t.status == "ok"]
        unsupported = False  # this machine cannot run it at all: not even measured for the record
        if c.precision == "int8-mixed" and any(t.precision == "int8" for t in passed_before):
            trial.reason = "plain int8 passed the gate"
        elif c.precision == "bf16" and not machine.has_bf16():
            trial.reason, unsupported = "this CPU has no native bf16", True
        elif passed_before and c.precision == "fp32" and cfg.precision == "auto":
            best = min(t.ms_per_frame for t in passed_before)
            trial.reason = f"a faster precision passed ({best:.1f} ms/frame)"
            if c.runtime == "onnxruntime" and c.device == "cpu":
                # Always timed: the reference every speed-up is quoted against.
                trial.status, trial.reason = "reference", "timed as the reference for speed-ups"
        if not trial.reason or trial.status == "reference":
            eligible.append(trial)
        elif exhaustive and not unsupported:
            trial.reason = f"measured for the record; the ladder skips it ({trial.reason})"
        else:
            log.info(f"  {c.label:<22} skipped: {trial.reason}")
            continue
        try:
            path = _build(c, checkpoint, sha, first_row, fp32, inputs, avatar, cfg.face_size_px)
            ms, mean, worst = _measure(path, c, inputs, shown, threads)
        except Exception as e:
            # A reduced build's own check refused it (LipsyncError), or NNCF, OpenVINO or ONNX
            # Runtime failed on it: either way this candidate is out and the ladder goes on.
            trial.status, trial.reason = "refused", _one_line(e)
            log.info(f"  {c.label:<22} refused: {trial.reason}")
            if not isinstance(e, LipsyncError):
                log.debug("%s failed", c.label, exc_info=True)
            continue
        trial.ms_per_frame, trial.psnr_db_shown_mean, trial.psnr_db_shown_worst = (
            round(ms, 2),
            round(mean, 2),
            round(worst, 2),
        )
        trial.decoder_file = os.path.relpath(path, entry_dir(sha))
        if mean >= GATE_MEAN_DB and worst >= GATE_WORST_DB:
            trial.status = "ok"
        else:
            trial.status = "refused"
            trial.reason = (
                f"PSNR {mean:.1f} dB mean / {worst:.1f} dB worst frame, under {GATE_MEAN_DB:g} / {GATE_WORST_DB:g}"
            )
        db = "   exact (fp32 reference)" if worst >= 150 else f"{mean:5.1f} dB mean  {worst:5.1f} dB worst"
        log.info(
            f"  {c.label:<22} {ms:6.1f} ms/frame  {db}  "
            + ("passes" if trial.status == "ok" else f"refused: {trial.reason}")
        )
    passed = [t for t in eligible if t.status == "ok"]
    if not passed:
        worst = next((t for t in trials if t.status == "refused"), None)
        raise LipsyncError(
            f"--precision {cfg.precision} --runtime {cfg.runtime}",
            f"a build that keeps >= {GATE_MEAN_DB:g} dB mean / {GATE_WORST_DB:g} dB worst frame",
            worst.reason if worst else "none could be built",
            "leave --precision on auto to let the ladder fall back",
        )
    best = min(passed, key=lambda t: t.ms_per_frame)
    best.chosen = True
    log.info(
        f"precision: {best.runtime} {best.precision}"
        + (f" on {best.device}" if best.device != "cpu" else "")
        + f" ({best.ms_per_frame:.1f} ms/frame, {best.psnr_db_shown_mean:.1f} dB)"
    )
    return Choice(
        best.runtime,
        best.precision,
        best.device,
        first_row,
        fp32["face_encoder"],
        entry_dir(sha) / best.decoder_file,
        trials,
    )

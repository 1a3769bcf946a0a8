#!/usr/bin/env python3
"""What the live path costs per frame on a checkpoint, next to ONNX Runtime fp32, and every
precision the ladder tried on the way.

    python benchmarks/bench_generator.py --json bench-out/generator.json [--checkpoint A.pth ...]
    python benchmarks/bench_generator.py --hd hd-256 --reps 20     # an HD layout's random-weight stand-in

Per checkpoint, in a process of its own (earlier thread pools would compete for the cores):
  * the precision ladder (export.precision) run afresh for the embedded photo avatar: every
    candidate with its ms/frame, shown-region PSNR (mean, worst frame) on held-out inputs, and
    status (ok, or refused with the reason); candidates the ladder would skip once a
    faster one passed are measured too, for the record;
  * the live path's per-frame work for a still photo given its mel window (the chosen
    row-cropped decoder on cached face features, uint8 conversion, feathered colour-matched
    paste) timed interleaved with the decoder call alone, then with the ONNX Runtime fp32 full
    generator at batch 1 (for the speed-up: that reference evicts the decoder from the caches,
    so the live path is slower beside it), interleaved so that machine drift cannot pick the
    winner; wall ms and CPU ms (both cores) per frame for each (the streaming mel and the sinks
    are in bench_live's whole-process CPU);
  * the decoder computing all rows vs only the rows shown, same runtime and precision;
  * the chosen decoder on one inference thread vs the live budget's (wall and CPU per call: a
    pool's threads waiting on each other cost CPU, one thread costs latency).
The live-path row also gives its stages (realtime.stage_timer): CPU and wall ms per frame of
the decoder, the uint8 conversion and the paste.
  * the reference implementation users run today, torch eager fp32 (the whole generator, batch 1),
    timed interleaved with the live path and ONNX Runtime fp32;
  * on a GPU: torch CUDA eager fp32 and our GPU runtimes at fp16, batch 1/8/32.
Without --checkpoint, two stand-ins of different styles are made (official format, random weights,
styles and seeds that the tests never use): quality figures from random weights are not those of
trained ones, speed does not depend on the weights. `--hd LAYOUT` (hd-256, hd-288, sam) makes a
stand-in of that HD layout instead (SAM at --face-size, default 384); an HD checkpoint of your own
goes in --checkpoint (with --face-size for SAM). `--plain-ladder` measures only what the ladder
itself measures (the int8 accuracy-aware search on an HD decoder takes many minutes).

JSON contract: `results` is a list of entries with runtime, precision, layout, batch,
ms_per_frame_median, status, reason, psnr_db_shown_mean, psnr_db_shown_worst, checkpoint; the
entry the live path uses has "chosen": true; the ORT fp32 full generator at batch 1 is always there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # synthetic.py: the random-weight checkpoint makers

STANDINS = {  # name -> CheckpointStyle arguments; seeds the tests never use
    "standin-affine-x10": dict(seed=101, calibration="photo", trained_affine=True, activation_scale=10.0),
    "standin-smooth-affine-x100": dict(seed=102, calibration="smooth", trained_affine=True, activation_scale=100.0),
}
AVATAR = ROOT / "media" / "avatar.jpg"


def make_standin(path: Path, style: dict) -> None:
    from export import samples
    from mediaio.audio import decode_audio
    from synthetic import CheckpointStyle, calibration_batches, make_styled_checkpoint

    # BatchNorm statistics from face B and voice C: not what the product calibrates on (face A /
    # the avatar, voice A), not what the tests use.
    batches = calibration_batches(
        samples._image("face_b.png"), samples.FACE_B_BOX, decode_audio(samples.DATA / "voice_c.mp3").mono_16k()
    )
    make_styled_checkpoint(path, CheckpointStyle(**style), batches)


def entry(**kw) -> dict:
    base = {
        "runtime": None,
        "precision": None,
        "layout": None,
        "batch": 1,
        "ms_per_frame_median": None,
        "status": "ok",
        "reason": "",
        "psnr_db_shown_mean": None,
        "psnr_db_shown_worst": None,
        "chosen": False,
    }
    base.update(kw)
    return base


def timed_interleaved(fns, reps: int):
    """Each of `fns` called in turn `reps` times, so machine drift hits all alike: per function,
    arrays of wall and CPU (all threads of the process) seconds per call."""
    for _ in range(3):
        for fn in fns:
            fn()
    wall = [[] for _ in fns]
    cpu = [[] for _ in fns]
    for _ in range(reps):
        for fn, w, c in zip(fns, wall, cpu):
            t, p = time.perf_counter(), time.process_time()
            fn()
            w.append(time.perf_counter() - t)
            c.append(time.process_time() - p)
    return [(np.array(w), np.array(c)) for w, c in zip(wall, cpu)]


def measure_checkpoint(
    ckpt: str, label: str, reps: int, face_size_px: int = 0, exhaustive: bool = True, reuse_ladder: bool = False
) -> list[dict]:
    """One checkpoint, in this process: the ladder, then the live path vs ORT fp32 and torch eager."""
    from export import precision
    from export.cache import ensure_exported
    from export.samples import heldout_set
    from realtime import threads
    from realtime.avatar import AvatarConfig, load_avatar
    from realtime.compositor import first_shown_row
    from realtime.generator import OnnxGenerator, RuntimeConfig, load_live_generator, model_face_size
    from realtime.renderer import Wav2LipRenderer
    from realtime.stage_timer import StageTimes, bind

    budget = threads.apply(threads.plan("live"))
    cfg = RuntimeConfig(
        runtime="auto",
        precision="auto",
        device="auto",
        intra_op_threads=budget.inference_threads,
        face_size_px=face_size_px,
    )
    size = model_face_size(ckpt, cfg)
    av = load_avatar(AvatarConfig(str(AVATAR), face_size=size))
    first = first_shown_row(av.boxes, av.paste_points(), size)
    samples = precision.AvatarSamples("bench-" + label, av.crops)
    from common import logged_lines

    with logged_lines("export") as lines:
        choice = precision.choose(
            ckpt,
            cfg,
            first_row=first,
            avatar=samples,
            remeasure=not reuse_ladder,
            exhaustive=exhaustive and not reuse_ladder,
        )
    for ln in lines:
        print(f"  {ln}", file=sys.stderr)
    rows = []
    for t in choice.trials:
        # The contract knows ok/refused: a candidate this machine cannot run at all is a refusal.
        status = "ok" if t.status == "ok" else "refused"
        reason = t.reason if t.status != "skipped" else f"not built: {t.reason}"
        rows.append(
            entry(
                runtime=t.runtime,
                precision=t.precision,
                layout=f"split, rows {first}-{size - 1}",
                ms_per_frame_median=t.ms_per_frame,
                status=status,
                reason=reason,
                psnr_db_shown_mean=t.psnr_db_shown_mean,
                psnr_db_shown_worst=t.psnr_db_shown_worst,
                chosen=t.chosen,
                checkpoint=label,
            )
        )

    gen = load_live_generator(ckpt, cfg, first_row=first, avatar=samples)
    av.attach_features(gen, f"bench:{gen.name}:{ckpt}")
    renderer = Wav2LipRenderer(gen, av, "feather")
    full = OnnxGenerator(
        ensure_exported(ckpt, "full", face_size_px=face_size_px)["full"],
        RuntimeConfig(intra_op_threads=budget.inference_threads),
    )
    eager = torch_eager(ckpt, face_size_px, budget.inference_threads)
    h = heldout_set(16, size=size)
    face1 = h.faces[:1]
    i = [0]

    live_stages = StageTimes()

    def live_frame():
        k = i[0] % len(h)
        i[0] += 1
        bind(live_stages)
        renderer.render(av.frames[0], 0, h.mels[k, 0], -1, 25.0)
        bind(None)

    def decoder_only():
        k = i[0] % len(h)
        gen.decode(h.mels[k : k + 1], av.features_at(0))

    def ort_full():
        full(h.mels[:1], face1)

    def torch_full():
        eager(h.mels[:1], face1)

    # The live path beside its decoder alone, nothing else in between (as in a live process);
    # then the live path beside the references, for the speed-ups: the fp32 references evict
    # the decoder's weights from the caches between calls, which slows both sides.
    (wl, cl), (wd, cd) = timed_interleaved([live_frame, decoder_only], reps)
    stages = live_stages.report(frames=i[0])["stages"]  # i[0]: live_frame calls, warm-up included
    (wl_ref, _), (wf, cf), (wt, ct) = timed_interleaved([live_frame, ort_full, torch_full], max(reps // 3, 20))
    live_ms, full_ms = float(np.median(wl) * 1000), float(np.median(wf) * 1000)
    live_beside_ref_ms = float(np.median(wl_ref) * 1000)
    rows.append(
        entry(
            runtime="torch",
            precision="fp32",
            layout="full, eager (the reference implementation)",
            ms_per_frame_median=round(float(np.median(wt) * 1000), 2),
            ms_per_frame_p95=round(float(np.percentile(wt, 95) * 1000), 2),
            cpu_ms_per_frame=round(float(np.mean(ct) * 1000), 2),
            checkpoint=label,
            face_size=size,
            reason="what users run today: the whole generator at batch 1, timed interleaved with the live path",
        )
    )
    rows.append(
        entry(
            runtime="onnxruntime",
            precision="fp32",
            layout="full",
            ms_per_frame_median=round(full_ms, 2),
            ms_per_frame_p95=round(float(np.percentile(wf, 95) * 1000), 2),
            cpu_ms_per_frame=round(float(np.mean(cf) * 1000), 2),
            checkpoint=label,
            face_size=size,
            reason="reference: the whole generator at batch 1, timed interleaved with the live path",
        )
    )
    t = choice.chosen_trial
    rows.append(
        entry(
            runtime=t.runtime,
            precision=t.precision,
            layout=f"live path per frame (split rows {first}-{size - 1} "
            "decoder on cached face features, uint8, feathered colour-matched paste)",
            ms_per_frame_median=round(live_ms, 2),
            ms_per_frame_p95=round(float(np.percentile(wl, 95) * 1000), 2),
            cpu_ms_per_frame=round(float(np.mean(cl) * 1000), 2),
            psnr_db_shown_mean=t.psnr_db_shown_mean,
            psnr_db_shown_worst=t.psnr_db_shown_worst,
            checkpoint=label,
            face_size=size,
            speedup_vs_ort_fp32_full=round(full_ms / live_beside_ref_ms, 2),
            speedup_vs_torch_eager_fp32=round(float(np.median(wt) * 1000) / live_beside_ref_ms, 2),
            ms_per_frame_beside_reference=round(live_beside_ref_ms, 2),
            live_fps_bound=round(1000 / live_ms, 1),
            generator_only_ms_per_frame=round(float(np.median(wd) * 1000), 2),
            generator_only_cpu_ms_per_frame=round(float(np.mean(cd) * 1000), 2),
            stages={k: {m: v[m] for m in ("cpu_ms_per_frame", "wall_ms_per_frame")} for k, v in stages.items()},
        )
    )
    rows.append(one_thread_row(ckpt, label, cfg, first, samples, av, gen, reps, t, size))
    rows += row_crop_rows(ckpt, label, first, budget.inference_threads, reps, face_size_px, size)
    rows += gpu_rows(ckpt, label, first, face_size_px, size, reps)
    return rows


def one_thread_row(ckpt: str, label: str, cfg, first: int, samples, av, gen, reps: int, trial, size: int) -> dict:
    """The chosen decoder on one inference thread against the same on the live budget's threads,
    timed interleaved: wall and CPU (all threads) per call."""
    import dataclasses

    from export.samples import heldout_set
    from realtime.generator import load_live_generator

    one = load_live_generator(ckpt, dataclasses.replace(cfg, intra_op_threads=1), first_row=first, avatar=samples)
    h = heldout_set(4, size=size)
    feats = av.features_at(0)
    (wa, ca), (wb, cb) = timed_interleaved(
        [lambda: gen.decode(h.mels[:1], feats), lambda: one.decode(h.mels[:1], feats)], max(reps // 3, 20)
    )
    return entry(
        runtime=trial.runtime,
        precision=trial.precision,
        layout=f"decoder (split rows {first}-{size - 1}) on 1 inference thread vs {cfg.intra_op_threads}",
        ms_per_frame_median=round(float(np.median(wb) * 1000), 2),
        cpu_ms_per_frame=round(float(np.mean(cb) * 1000), 2),
        budget_threads_ms_per_frame=round(float(np.median(wa) * 1000), 2),
        budget_threads_cpu_ms_per_frame=round(float(np.mean(ca) * 1000), 2),
        checkpoint=label,
        reason="thread-count comparison, timed interleaved",
    )


GPU_BATCHES = (1, 8, 32)


def gpu_rows(ckpt: str, label: str, first: int, face_size_px: int, size: int, reps: int) -> list[dict]:
    """With a GPU: torch CUDA eager fp32 (what LiveTalking runs) and our GPU runtimes at fp16 (torch
    CUDA graphs; ONNX Runtime CUDA and TensorRT where onnxruntime-gpu runs), the row-cropped decoder
    on fixed face features, at batch 1/8/32. Without one: one row saying why nothing was measured."""
    from export import machine

    gpu, gpu_reason = machine.usable_gpu_providers()
    torch_reason = machine.torch_cuda_reason()
    if not gpu and torch_reason is not None:
        why = f"not measured: no usable GPU here ({gpu_reason or 'no onnxruntime-gpu'}; torch: {torch_reason})"
        return [
            entry(runtime="gpu", precision="fp16", layout="GPU rows", status="refused", reason=why, checkpoint=label)
        ]
    from export.cache import checkpoint_sha256, ensure_exported, entry_dir
    from export.metadata import SKIPS, decoder_variant
    from export.runtime import RuntimeConfig, make_runner
    from export.samples import heldout_set

    variant = decoder_variant(first)
    sha = checkpoint_sha256(ckpt, face_size_px)
    fp32 = ensure_exported(ckpt, "split", first_row=first, face_size_px=face_size_px)
    enc = make_runner(fp32["face_encoder"], RuntimeConfig(device="cpu"))
    h = heldout_set(max(GPU_BATCHES), size=size)
    skips = enc({"face": h.faces})
    runners: list[tuple[str, str, str, object]] = []
    if torch_reason is None:
        import torch

        from export.torch_cuda import TorchCudaRunner, write_descriptor
        from models.checkpoint import load_torch_generator

        net = load_torch_generator(ckpt, face_size_px).cuda().eval()

        def eager(feeds):
            with torch.inference_mode():
                args = [torch.from_numpy(feeds["mel"]).cuda()]
                args += [torch.from_numpy(feeds[k]).cuda() for k in SKIPS if k in feeds]
                return [net.decode_rows(args[0], args[1:], first).cpu().numpy()]

        desc = write_descriptor(entry_dir(sha) / f"{variant}-torch-cuda-fp16.json", ckpt, sha, face_size_px, variant)
        runners += [
            ("torch", "fp32", "cuda eager (what LiveTalking runs)", eager),
            ("torch-cuda", "fp16", "cuda graphs, channels-last", TorchCudaRunner(desc, "fp16")),
        ]
    for provider, device in (("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")):
        if provider in gpu:
            fp16 = ensure_exported(ckpt, "split", "fp16", first_row=first, face_size_px=face_size_px)[variant]
            runners.append(
                ("onnxruntime", "fp16", device, make_runner(fp16, RuntimeConfig(precision="fp16", device=device)))
            )
    out = []
    for batch in GPU_BATCHES:
        feed = {"mel": h.mels[:batch], **{k: s[:batch] for k, s in zip(SKIPS, skips)}}
        timed = timed_interleaved([lambda r=r, f=feed: r[3](f) for r in runners], max(reps // 3, 10))
        for (rt, prec, where, _), (w, _cpu) in zip(runners, timed):
            out.append(
                entry(
                    runtime=rt,
                    precision=prec,
                    layout=f"split decoder rows {first}-{size - 1}, {where}",
                    batch=batch,
                    ms_per_frame_median=round(float(np.median(w) * 1000) / batch, 3),
                    ms_per_batch_median=round(float(np.median(w) * 1000), 2),
                    checkpoint=label,
                    face_size=size,
                    reason="GPU, timed interleaved",
                )
            )
    return out


def torch_eager(ckpt: str, face_size_px: int, threads: int):
    """The reference backend (PyTorch eager, fp32) on this process's thread budget."""
    import torch

    from models.torch_generator import TorchGenerator

    torch.set_num_threads(threads)
    return TorchGenerator(ckpt, face_size_px)


def row_crop_rows(
    ckpt: str, label: str, first: int, threads: int, reps: int, face_size_px: int = 0, size: int = 96
) -> list[dict]:
    """The decoder computing all rows vs only rows `first`.., same runtime and precision."""
    from export import machine
    from export.cache import ensure_exported
    from export.metadata import SKIPS, decoder_variant
    from export.runtime import RuntimeConfig, make_runner
    from export.samples import heldout_set

    full = ensure_exported(ckpt, "split", face_size_px=face_size_px)
    crop = ensure_exported(ckpt, "split", first_row=first, face_size_px=face_size_px)
    enc = make_runner(full["face_encoder"], RuntimeConfig(intra_op_threads=threads))
    h = heldout_set(1, size=size)
    feed = {"mel": h.mels[:1], **dict(zip(SKIPS, enc({"face": h.faces[:1]})))}
    out = []
    pairs = [("onnxruntime", "fp32")]
    if "openvino" in machine.runtime_versions():
        pairs.append(("openvino", "bf16" if machine.has_bf16() else "fp32"))
    for rt, prec in pairs:
        cfg = RuntimeConfig(runtime=rt, precision=prec, intra_op_threads=threads)
        a, b = make_runner(full["decoder"], cfg), make_runner(crop[decoder_variant(first)], cfg)
        # The lambdas run inside this iteration, on this iteration's runners.
        (wa, _), (wb, _) = timed_interleaved([lambda: a(feed), lambda: b(feed)], max(reps // 3, 20))  # noqa: B023
        ma, mb = float(np.median(wa) * 1000), float(np.median(wb) * 1000)
        for layout, ms in (("split decoder, all rows", ma), (f"split decoder, rows {first}-{size - 1}", mb)):
            out.append(
                entry(
                    runtime=rt,
                    precision=prec,
                    layout=layout,
                    ms_per_frame_median=round(ms, 2),
                    checkpoint=label,
                    reason="row-crop comparison, timed interleaved",
                    row_crop_speedup=round(ma / mb, 2),
                )
            )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=None, help="repeatable; default: two stand-ins")
    ap.add_argument("--json", default="bench-out/generator.json")
    ap.add_argument("--reps", type=int, default=150, help="interleaved timing pairs per checkpoint")
    ap.add_argument(
        "--reuse-ladder",
        action="store_true",
        help="take the ladder's recorded choice instead of measuring every candidate again (a smoke run)",
    )
    ap.add_argument(
        "--hd", choices=["hd-256", "hd-288", "sam"], default=None, help="measure a random-weight HD stand-in"
    )
    ap.add_argument("--face-size", type=int, default=0, help="SAM layout: the face size (default 384 with --hd sam)")
    ap.add_argument(
        "--plain-ladder", action="store_true", help="only the candidates the ladder itself measures (quicker)"
    )
    ap.add_argument("--one", nargs=2, metavar=("CHECKPOINT", "LABEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.hd == "sam" and not args.face_size:
        args.face_size = 384

    if args.one:
        try:
            rows = measure_checkpoint(
                args.one[0],
                args.one[1],
                args.reps,
                args.face_size,
                exhaustive=not args.plain_ladder,
                reuse_ladder=args.reuse_ladder,
            )
        except Exception as e:  # recorded, never a crash: the other checkpoints still run
            rows = [entry(checkpoint=args.one[1], status="refused", reason=f"run failed: {type(e).__name__}: {e}")]
        print(json.dumps(rows))
        return 0

    tmp = tempfile.TemporaryDirectory()
    os.environ.setdefault("LIPSYNC_CACHE_DIR", os.path.join(tmp.name, "cache"))
    todo = []
    if args.checkpoint:
        todo = [(c, Path(c).name) for c in args.checkpoint]
    elif args.hd:
        from synthetic import make_embedded_calibrated_checkpoint

        path = Path(tmp.name) / f"standin-{args.hd}.pth"
        make_embedded_calibrated_checkpoint(path, seed=103, network=args.hd, face_size_px=args.face_size)
        todo.append((str(path), f"standin-{args.hd}"))
    else:
        for name, style in STANDINS.items():
            path = Path(tmp.name) / f"{name}.pth"
            make_standin(path, style)
            todo.append((str(path), name))
    results = []
    for ckpt, label in todo:
        print(f"[{label}]", file=sys.stderr)
        extra = ["--face-size", str(args.face_size)] + (["--plain-ladder"] if args.plain_ladder else [])
        extra += ["--reuse-ladder"] if args.reuse_ladder else []
        proc = subprocess.run(
            [sys.executable, __file__, "--reps", str(args.reps), *extra, "--one", ckpt, label],
            capture_output=True,
            text=True,
        )
        sys.stderr.write(proc.stderr)
        try:
            rows = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            rows = [
                entry(
                    checkpoint=label,
                    status="refused",
                    reason=f"run failed, exit {proc.returncode}: {proc.stderr[-300:]}",
                )
            ]
        # The reference is always there, even when the run failed before timing it.
        if not any(r["runtime"] == "onnxruntime" and r["precision"] == "fp32" and r["layout"] == "full" for r in rows):
            rows.append(
                entry(
                    runtime="onnxruntime",
                    precision="fp32",
                    layout="full",
                    status="refused",
                    reason="not measured: the run failed before timing",
                    checkpoint=label,
                )
            )
        for r in rows:
            ms = "-" if r["ms_per_frame_median"] is None else f"{r['ms_per_frame_median']:.2f}"
            db = "" if r["psnr_db_shown_mean"] is None else f"{r['psnr_db_shown_mean']}/{r['psnr_db_shown_worst']} dB"
            print(
                f"  {r['runtime']} {r['precision']} [{r['layout']}] {ms} ms  {db} {r['status']}"
                f"{' CHOSEN' if r['chosen'] else ''} {r.get('speedup_vs_ort_fp32_full', '')}",
                file=sys.stderr,
            )
        results.extend(rows)
    from export import machine

    doc = {
        "results": results,
        "machine": machine.summary(),
        "avatar": "media/avatar.jpg (512x512 photo)",
        "weights": "user checkpoints"
        if args.checkpoint
        else f"random weights in the official format, HD layout {args.hd}"
        if args.hd
        else "random weights in the official format, styles " + ", ".join(STANDINS) + " (not used by the tests)",
        "gate": "PSNR vs fp32 on the rows shown, >= 30 dB mean and >= 27 dB worst frame, on a held-out face and voices",
    }
    from common import write_json

    write_json(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

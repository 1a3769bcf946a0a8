"""ONNX export, verification, reduced precision, the export cache, and runtime selection."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from models.errors import LipsyncError


@pytest.fixture(scope="module")
def split_paths(generator_ckpt):
    from export.cache import ensure_exported

    return ensure_exported(generator_ckpt, "split")


@pytest.fixture(scope="module")
def full_path(generator_ckpt):
    from export.cache import ensure_exported

    return ensure_exported(generator_ckpt, "full")["full"]


@pytest.fixture(scope="module")
def parity_inputs():
    """Face A and voice A (export.samples): real inputs for exact-parity checks. int8 calibration
    takes its ranges from these same sources, so they never judge reduced precision."""
    from export.onnx import verification_inputs

    return verification_inputs(8, seed=7)


def test_full_export_matches_torch_and_carries_metadata(generator_ckpt, full_path, parity_inputs):
    import torch

    from export.metadata import read_metadata
    from models.checkpoint import load_torch_generator
    from models.hashing import sha256_file
    from realtime.generator import OnnxGenerator

    mels, faces = parity_inputs
    with torch.no_grad():
        want = load_torch_generator(generator_ckpt)(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()
    got = OnnxGenerator(full_path)(mels, faces)
    assert np.abs(got - want).max() <= 1e-4
    assert want.std() > 0.01  # a picture, not a constant
    meta = read_metadata(full_path)
    assert meta["lipsync.source_sha256"] == sha256_file(generator_ckpt)
    assert meta["lipsync.variant"] == "full" and meta["lipsync.precision"] == "fp32"
    assert meta["lipsync.opset"] == "17" and "lipsync-rt" in meta["lipsync.tool"]
    assert '"n_fft": 800' in meta["lipsync.mel"] and '"pad": "reflect"' in meta["lipsync.mel"]


def test_dynamic_batch(full_path, parity_inputs):
    from realtime.generator import OnnxGenerator

    gen = OnnxGenerator(full_path)
    mels, faces = parity_inputs
    whole = gen(mels, faces)
    assert whole.shape == (8, 3, 96, 96)
    assert np.abs(gen(mels[:3], faces[:3]) - whole[:3]).max() < 1e-5


def test_split_path_with_cached_features_equals_full_graph(full_path, split_paths, parity_inputs):
    from realtime.generator import OnnxGenerator, SplitGenerator

    mels, faces = parity_inputs
    split = SplitGenerator(split_paths["face_encoder"], split_paths["decoder"])
    feats = split.encode(faces[:1].repeat(8, axis=0))  # one avatar frame, cached
    full = OnnxGenerator(full_path)(mels, faces[:1].repeat(8, axis=0))
    assert np.abs(split.decode(mels, feats) - full).max() < 1e-5


def test_second_use_hits_the_cache(generator_ckpt, full_path, monkeypatch):
    from export import cache

    def no_build(*a, **k):
        raise AssertionError("a cached export must not be rebuilt")

    monkeypatch.setattr(cache, "build", no_build)
    assert cache.ensure_exported(generator_ckpt, "full")["full"] == full_path


def test_entry_from_another_checkpoint_is_never_reused(tmp_path, full_path, photo, speech_wav):
    import shutil

    import media
    from export import cache
    from export.metadata import read_metadata
    from models.hashing import sha256_file
    from synthetic import make_checkpoint

    other = tmp_path / "other.pth"
    make_checkpoint(other, "Wav2Lip", seed=11, calibration=media.calibration_batches(photo, speech_wav)[:1])
    sha = sha256_file(other)
    planted = cache.entry_paths(sha, "full")["full"]
    planted.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(full_path, planted)  # a stale or foreign file sitting at the other key's path
    path = cache.ensure_exported(other, "full")["full"]
    assert read_metadata(path)["lipsync.source_sha256"] == sha


def _cache_files(cache_dir):
    root = cache_dir / "exports"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize("kind", ["syncnet", "truncated"])
def test_bad_checkpoint_export_fails_cleanly(tmp_path, generator_ckpt, cache_dir, kind):
    from export.cache import ensure_exported
    from synthetic import make_checkpoint

    bad = tmp_path / "bad.pth"
    if kind == "syncnet":
        make_checkpoint(bad, "SyncNet_color")
    else:
        bad.write_bytes(generator_ckpt.read_bytes()[:1_000_000])
    before = _cache_files(cache_dir)
    with pytest.raises(LipsyncError) as e:
        ensure_exported(bad, "full")
    assert "\n" not in str(e.value)
    assert _cache_files(cache_dir) == before


def test_export_past_tolerance_fails_and_leaves_nothing(tmp_path, monkeypatch, generator_ckpt):
    from export import onnx as onnx_export
    from export.cache import ensure_exported

    monkeypatch.setenv("LIPSYNC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_export, "FP32_ATOL", 0.0)
    monkeypatch.setattr(onnx_export, "FP32_RTOL", 0.0)
    with pytest.raises(LipsyncError, match=r"output \S+ of \.full-fp32\.onnx\.\d+\.partial.*worst abs"):
        ensure_exported(generator_ckpt, "full")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_export_cli(generator_ckpt, full_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lipsync.cli", "export", "--checkpoint", str(generator_ckpt)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"full: {full_path}"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_keeps_30db_on_faces_and_a_voice_it_was_not_calibrated_on(
    generator_ckpt, full_path, judge_inputs, runtime
):
    """int8 takes its ranges from face A with voice A (export.samples.calibration_set) and the build
    checks itself on face B with voices B and C; judged here on neither: other people's faces (LFW)
    and another voice. The error is measured against the picture's own contrast as well as the
    gate's fixed peak of 1, so an output with little contrast cannot pass by having little to lose."""
    from export.quantize import psnr_db
    from realtime.generator import OnnxGenerator, RuntimeConfig, load_generator

    if runtime == "openvino":
        pytest.importorskip("openvino")
    mels, faces = judge_inputs
    ref = OnnxGenerator(full_path)(mels, faces).astype(np.float64)
    gen = load_generator(generator_ckpt, RuntimeConfig(runtime=runtime, precision="int8"))
    got = gen(mels, faces).astype(np.float64)
    assert psnr_db(got, ref) >= 30.0
    # Per picture, the error against that picture's own spread: 30 dB against a peak of 1 is an
    # error of 0.03, which is little on a picture spanning 0..1 and a third of one spanning
    # 0.4..0.6. Measured here (random weights): contrast 0.08-0.12, error 0.27 of it on average,
    # 0.33 at worst, on both runtimes; trained weights give pictures of more contrast.
    rms = np.sqrt(((got - ref) ** 2).mean(axis=(1, 2, 3)))
    contrast = ref.std(axis=(1, 2, 3))
    assert contrast.min() > 0.02, contrast.min()  # pictures, not flat colours
    assert (rms <= 0.4 * contrast).all(), (rms / contrast).max()


def test_openvino_bf16_runs_the_fp32_graph(generator_ckpt, full_path, parity_inputs):
    pytest.importorskip("openvino")
    from export.quantize import psnr_db
    from realtime.generator import OnnxGenerator, RuntimeConfig, load_generator

    mels, faces = parity_inputs
    gen = load_generator(generator_ckpt, RuntimeConfig(runtime="openvino", precision="bf16"))
    assert psnr_db(gen(mels, faces), OnnxGenerator(full_path)(mels, faces)) >= 30.0


def test_rewrite_without_convtranspose_is_exact(generator_ckpt, parity_inputs):
    import torch

    from export.rewrite import convtranspose_as_conv
    from models.checkpoint import load_torch_generator

    net = load_torch_generator(generator_ckpt)
    rw = convtranspose_as_conv(net)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in rw.modules())
    mels, faces = map(torch.from_numpy, parity_inputs)
    with torch.no_grad():
        assert (net(mels, faces) - rw(mels, faces)).abs().max() < 1e-5


def test_provider_selection_and_no_silent_fallback(full_path):
    from export.runtime import RuntimeConfig, choose_providers
    from realtime.generator import OnnxGenerator

    cpu, cuda, trt = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
    assert choose_providers("auto", [cpu]) == [cpu]
    assert choose_providers("auto", [trt, cuda, cpu]) == [cuda, cpu]
    assert choose_providers("tensorrt", [trt, cuda, cpu]) == [trt, cuda, cpu]
    assert choose_providers("cpu", [cuda, cpu]) == [cpu]
    with pytest.raises(LipsyncError, match="onnxruntime-gpu"):
        choose_providers("cuda", [cpu])
    import onnxruntime

    if cuda not in onnxruntime.get_available_providers():
        with pytest.raises(LipsyncError, match="CUDAExecutionProvider"):
            OnnxGenerator(full_path, RuntimeConfig(device="cuda"))
    assert OnnxGenerator(full_path, RuntimeConfig(device="auto")).name.startswith("onnxruntime:")


def test_live_path_loads_from_warm_cache_without_torch(generator_ckpt, full_path):
    code = (
        "import sys; from realtime.generator import load_generator; "
        f"g = load_generator({str(generator_ckpt)!r}); "
        "import numpy as np; g(np.zeros((1,1,80,16),np.float32), np.zeros((1,6,96,96),np.float32)); "
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_fp16_export_for_gpus_is_near_lossless(generator_ckpt, full_path, parity_inputs):
    """Built for CUDA/TensorRT; ONNX Runtime's CPU provider runs it too, which lets it be checked here."""
    import onnx

    from export.cache import ensure_exported
    from export.quantize import psnr_db
    from realtime.generator import OnnxGenerator

    path = ensure_exported(generator_ckpt, "full", "fp16")["full"]
    model = onnx.load(str(path))
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)
    mels, faces = parity_inputs
    assert psnr_db(OnnxGenerator(path)(mels, faces), OnnxGenerator(full_path)(mels, faces)) >= 40.0


def test_metadata_is_read_from_the_top_level_fields_as_onnx_reads_it(full_path, tmp_path):
    """Every start checks its graphs' metadata without onnx: the same pairs as onnx's parser, and
    a cut-off file is refused (it is then rebuilt), never read as valid."""
    import onnx

    from export.cache import _valid
    from export.metadata import read_metadata

    want = {p.key: p.value for p in onnx.load(str(full_path), load_external_data=False).metadata_props}
    assert read_metadata(full_path) == want and "lipsync.source_sha256" in want
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full_path.read_bytes()[: full_path.stat().st_size // 2])
    assert not _valid(cut, want["lipsync.source_sha256"], "fp32")

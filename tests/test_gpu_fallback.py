"""The GPU runtimes' code paths on a machine without a GPU (this one): what the ladder would try on
a GPU, that a missing driver or library is one line and then the CPU ladder, and that torch stays
out of a process that does not run it. The GPU figures themselves were not measured here."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from export.precision import Candidate, candidates
from export.runtime import RuntimeConfig
from models.errors import LipsyncError

ROOT = Path(__file__).resolve().parent.parent


def _labels(cands):
    return [(c.runtime, c.precision, c.device) for c in cands]


def test_gpu_candidates_come_first_and_follow_the_pins():
    auto = RuntimeConfig(runtime="auto", precision="auto", device="auto")
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    got = _labels(candidates(auto, True, False, both, torch_cuda=True))
    assert got[:4] == [
        ("onnxruntime", "fp16", "tensorrt"),
        ("onnxruntime", "fp16", "cuda"),
        ("onnxruntime", "fp32", "cuda"),
        ("torch-cuda", "fp16", "cuda"),
    ]
    assert all(d == "cpu" for _, _, d in got[4:]) and ("onnxruntime", "fp32", "cpu") in got
    # Nothing usable: the CPU ladder only.
    assert all(c.device == "cpu" for c in candidates(auto, True, False, [], torch_cuda=False))
    # Pins restrict: torch-cuda alone, or the CUDA EP alone.
    pin_torch = RuntimeConfig(runtime="torch-cuda", precision="auto", device="auto")
    assert candidates(pin_torch, True, False, both, torch_cuda=True) == [Candidate("torch-cuda", "fp16", "cuda")]
    pin_cuda = RuntimeConfig(runtime="onnxruntime", precision="fp16", device="cuda")
    assert _labels(candidates(pin_cuda, True, False, both, torch_cuda=True)) == [("onnxruntime", "fp16", "cuda")]


def test_probing_for_a_gpu_without_a_driver_never_loads_torch():
    code = (
        "import sys; from export import machine; "
        "print(machine.torch_cuda_reason()); print(machine.usable_gpu_providers()); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    reason, providers, torch_loaded = out.stdout.strip().splitlines()
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver")
    assert reason in ("no NVIDIA driver", "torch is not installed")
    assert providers == "([], None)"  # the CPU onnxruntime wheel lists no GPU provider
    assert torch_loaded == "False"


def test_torch_cuda_runner_without_cuda_is_one_line(tmp_path):
    pytest.importorskip("torch")
    from export.torch_cuda import TorchCudaRunner, unavailable_reason, write_descriptor

    if unavailable_reason() is None:
        pytest.skip("this machine runs torch on CUDA")
    desc = write_descriptor(tmp_path / "decoder-torch-cuda-fp16.json", tmp_path / "x.pth", "0" * 64, 0, "decoder")
    with pytest.raises(LipsyncError) as e:
        TorchCudaRunner(desc)
    assert "\n" not in str(e.value) and "torch-cuda" in str(e.value) and "CUDA" in str(e.value)


def test_tensorrt_engines_are_cached_beside_the_graph_they_come_from(tmp_path):
    from export.runtime import tensorrt_options

    graph = tmp_path / "entry" / "decoder_r48-fp16.onnx"
    graph.parent.mkdir()
    opts = tensorrt_options(graph)
    assert opts["trt_fp16_enable"] and opts["trt_engine_cache_enable"]
    assert Path(opts["trt_engine_cache_path"]) == graph.parent / "trt-decoder_r48-fp16"
    assert Path(opts["trt_engine_cache_path"]).is_dir()


@pytest.mark.slow
def test_ladder_on_auto_says_one_line_and_chooses_on_the_cpu(generator_ckpt, caplog):
    from export import machine
    from export.precision import choose

    if machine.usable_gpu_providers()[0] or machine.torch_cuda_reason() is None:
        pytest.skip("this machine has a usable GPU")
    cfg = RuntimeConfig(runtime="auto", precision="fp32", device="auto")
    with caplog.at_level(logging.INFO, logger="export.precision"):
        choice = choose(generator_ckpt, cfg, first_row=48, remeasure=True)
    gpu_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("GPU:")]
    assert len(gpu_lines) == 1  # torch is installed (the tests need it): it is probed, and said why not
    assert "\n" not in gpu_lines[0] and "CPU ladder" in gpu_lines[0] and "no NVIDIA driver" in gpu_lines[0]
    assert choice.device == "cpu" and choice.precision == "fp32"
    assert all(t.device == "cpu" for t in choice.trials)


@pytest.mark.slow
def test_a_pinned_gpu_without_one_is_refused_in_one_line(generator_ckpt):
    from export import machine
    from export.precision import choose

    if machine.usable_gpu_providers()[0]:
        pytest.skip("this machine has a usable GPU")
    cfg = RuntimeConfig(runtime="onnxruntime", precision="fp32", device="cuda")
    with pytest.raises(LipsyncError) as e:
        choose(generator_ckpt, cfg, first_row=48, remeasure=True)
    msg = str(e.value)
    assert "\n" not in msg and "CUDAExecutionProvider" in msg and "gpu" in msg

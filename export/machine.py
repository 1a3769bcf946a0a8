"""What this machine can run fast: CPU instruction sets, cores, accelerators, runtime versions.

The precision ladder orders its candidates by these and keys its recorded decision on them: a
choice measured on a CPU with AMX says nothing about one without.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

# Flags (as /proc/cpuinfo names them) that change which precision is fastest here.
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_bf16() -> bool:
    """Native bf16 math (AVX512-BF16 or AMX): otherwise bf16 is emulated and slower than f32."""
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:  # not Linux: ask OpenVINO, which reads CPUID itself
        import openvino as ov  # openvino: an optional extra

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # no OpenVINO: nothing can run bf16 here anyway
        return False


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "openvino": ("openvino",),
    "nncf": ("nncf",),
}


@lru_cache(maxsize=1)
def runtime_versions() -> dict[str, str]:
    """Installed runtimes from package metadata. Never imports them: NNCF pulls in torch, which a
    warm live start must not load."""
    out = {}
    for module, dists in RUNTIME_DISTRIBUTIONS.items():
        if find_spec(module) is None:
            continue
        for dist in dists:
            try:
                out[module] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


def gpu_providers() -> list[str]:
    try:
        import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

        return [p for p in ort.get_available_providers() if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")]
    except ImportError:
        return []


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version line; None without one (read, nothing loaded)."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            return f.readline().strip() or None
    except OSError:
        return None


def usable_gpu_providers() -> tuple[list[str], str | None]:
    """ONNX Runtime's GPU providers that can run here, and why none can (None when some can or
    none is installed). A GPU build on a machine without a driver lists its providers all the
    same, then falls back to the CPU by itself: that is caught here, not at the first frame."""
    listed = gpu_providers()
    if listed and nvidia_driver() is None:
        return [], "onnxruntime-gpu has no NVIDIA driver to run on"
    return listed, None


@lru_cache(maxsize=1)
def torch_cuda_reason() -> str | None:
    """Why the torch CUDA runtime (export.torch_cuda) cannot run here; None when it can. torch is
    imported only on a machine with an NVIDIA driver: a CPU live process never loads it."""
    if find_spec("torch") is None:
        return "torch is not installed"
    if nvidia_driver() is None:
        return "no NVIDIA driver"
    from export.torch_cuda import unavailable_reason  # torch: on a machine with an NVIDIA driver only

    return unavailable_reason()


def summary() -> dict:
    flags = cpu_flags()
    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "features": [f for f in FEATURES if f in flags],
        "gpu_providers": gpu_providers(),
        "runtimes": runtime_versions(),
    }


def fingerprint() -> str:
    """Changes when anything that could change the ladder's measurements changes."""
    return hashlib.sha256(json.dumps(summary(), sort_keys=True).encode()).hexdigest()[:16]

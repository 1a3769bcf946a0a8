"""Running exported graphs: ONNX Runtime (CPU, CUDA, TensorRT) and OpenVINO sessions behind one
call, numpy in and out; and the torch CUDA runtime (export.torch_cuda), the only one that loads
torch, imported here only when it is asked for.

The live path (realtime.generator) and the precision ladder (export.precision) both run graphs
through this, so a candidate is timed and judged by exactly the runtime that will run it live.
Sessions are built with explicit options (threads, graph optimisation level) instead of ORT's
defaults, and on GPUs run through IOBinding so outputs stay on the device until copied once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.machine import has_bf16
from models.errors import LipsyncError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class RuntimeConfig:
    # "auto" (live path): the precision ladder (export.precision) picks, per checkpoint and
    # machine, the fastest candidate that passes the quality gate; a named value pins it.
    runtime: str = "onnxruntime"  # auto | onnxruntime | openvino | torch-cuda
    precision: str = "fp32"  # auto | fp32 | int8 | int8-mixed (openvino) | fp16 (GPU) | bf16 (openvino)
    device: str = "auto"  # auto | cpu | cuda | tensorrt (onnxruntime)
    intra_op_threads: int = 0  # 0: one per physical core (ORT's choice)
    inter_op_threads: int = 1
    graph_optimization: str = "all"  # basic | extended | all
    warmup_runs: int = 1
    # The SAM layout's face size (its weights do not fix it: models.layouts); 0 for the others.
    face_size_px: int = 0


def choose_providers(device: str, available: list[str]) -> list[str]:
    """Providers for `device`; `auto` takes CUDA when this onnxruntime build has it, else CPU.

    An explicitly requested accelerator that is missing is an error, not a quiet CPU run.
    """
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    if device not in PROVIDERS:
        raise LipsyncError("--device", "auto, cpu, cuda or tensorrt", repr(device), "pick one of those")
    wanted = PROVIDERS[device]
    if wanted[0] not in available:
        raise LipsyncError(
            f"--device {device}",
            wanted[0],
            "only " + ", ".join(available),
            "install onnxruntime-gpu (the 'gpu' extra, not beside 'cpu') on a machine with "
            "an NVIDIA GPU, or use --device cpu",
        )
    return [p for p in wanted if p in available]


def tensorrt_options(path: str | Path) -> dict:
    """TensorRT EP settings: fp16 kernels, and built engines cached on disk beside the graph they
    were built from (an entry of the export cache: keyed by checkpoint, variant and precision like
    the exports), so only the first start on a machine pays the minutes of engine building."""
    cache = Path(path).parent / f"trt-{Path(path).stem}"
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }


def _preload_gpu_libraries(ort) -> None:
    """onnxruntime-gpu installed with its `cuda,cudnn` extras finds CUDA and cuDNN in the nvidia-*
    wheels only once they are loaded (or on LD_LIBRARY_PATH); `preload_dlls` does that (1.21+)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # missing libraries: the session below says which provider failed
            pass


def make_session(path: str | Path, cfg: RuntimeConfig = RuntimeConfig()):
    import onnxruntime as ort  # onnxruntime: an extra (the cpu or the gpu build), loaded when a graph runs

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cfg.intra_op_threads
    opts.inter_op_num_threads = cfg.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's worker threads spin after each run by default. With more than one session (split
    # path) or other busy threads (audio, encoder, sinks) on 2 cores, idle spinning pools steal
    # the cores the running session needs: measured 116 ms/frame instead of 43 here.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[cfg.graph_optimization]
    providers: list = choose_providers(cfg.device, ort.get_available_providers())
    if providers[0] != "CPUExecutionProvider":
        _preload_gpu_libraries(ort)
    if providers[0] == "TensorrtExecutionProvider":
        providers = [("TensorrtExecutionProvider", tensorrt_options(path)), *providers[1:]]
    wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
    session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    if session.get_providers()[0] != wanted:
        # ONNX Runtime falls back to the CPU by itself when a GPU provider cannot start (no driver,
        # CUDA/cuDNN/TensorRT libraries missing): that would be a quiet, much slower run.
        raise LipsyncError(
            f"--device {cfg.device}",
            f"{wanted} running",
            f"it could not start here (no NVIDIA driver, or CUDA/cuDNN{'/TensorRT' if 'Tensorrt' in wanted else ''} "
            f"libraries missing); ONNX Runtime fell back to {session.get_providers()[0]}",
            "install the 'gpu' extra on a machine with an NVIDIA driver, or use --device cpu",
        )
    return session


def graph_precision(cfg: RuntimeConfig) -> str:
    """Which exported graph a config runs: bf16 is a runtime mode over the fp32 graph, and int8
    on ONNX Runtime uses the ConvTranspose-free rewrite (see export.rewrite)."""
    if cfg.precision == "bf16":
        return "fp32"
    if cfg.precision == "int8" and cfg.runtime == "onnxruntime":
        return "int8-ort"
    return cfg.precision


def openvino_hint(precision: str) -> str:
    """OpenVINO's inference precision for a config. int8 graphs run their float remainder in
    bf16 where the CPU has it (what the quality gate measured), else in f32. The hint is always
    set: left alone, OpenVINO picks bf16 by itself on CPUs with AMX, so "fp32" would not be."""
    if precision in ("int8", "int8-mixed"):
        return "bf16" if has_bf16() else "f32"
    return "bf16" if precision == "bf16" else "f32"


def make_runner(path, cfg: RuntimeConfig):
    """A callable running the graph at `path` as `cfg` says: numpy feeds in, numpy outputs out."""
    if cfg.runtime == "torch-cuda":
        from export.torch_cuda import TorchCudaRunner  # torch: only this runtime loads it, only when chosen

        return TorchCudaRunner(path, cfg.precision)
    if cfg.runtime == "openvino":
        if cfg.precision not in ("fp32", "bf16", "int8", "int8-mixed"):
            raise LipsyncError(
                "--precision",
                "fp32, bf16, int8 or int8-mixed with openvino",
                cfg.precision,
                "fp16 is for GPUs with onnxruntime",
            )
        return OpenVinoRunner(path, openvino_hint(cfg.precision), cfg.intra_op_threads)
    if cfg.runtime != "onnxruntime":
        raise LipsyncError("--runtime", "onnxruntime, openvino or torch-cuda", repr(cfg.runtime), "pick one of those")
    if cfg.precision in ("bf16", "int8-mixed"):
        raise LipsyncError(
            f"--precision {cfg.precision}",
            "--runtime openvino",
            "onnxruntime",
            "ONNX Runtime has no kernels for it here; add --runtime openvino",
        )
    return OrtRunner(make_session(path, cfg))


class OrtRunner:
    """Runs one session with numpy in and out; on a GPU provider, through IOBinding."""

    def __init__(self, session):
        self.session = session
        self.on_gpu = session.get_providers()[0] != "CPUExecutionProvider"
        self.output_names = [o.name for o in session.get_outputs()]

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.session.run(self.output_names, feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
            else:  # an OrtValue already on the device (cached face features)
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def run_on_device(self, feeds: dict) -> list:
        """GPU only: outputs as device-resident OrtValues (for features that are reused)."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()


class OpenVinoRunner:
    """The same ONNX graphs through OpenVINO, which runs QDQ int8 graphs as true int8 kernels
    and can run fp32 graphs in bf16 on CPUs that have AVX512-BF16 or AMX."""

    on_gpu = False

    def __init__(self, path: str | Path, hint: str, threads: int = 0):
        try:
            import openvino as ov  # openvino: an optional extra
        except ImportError:
            raise LipsyncError(
                "--runtime openvino",
                "the openvino package",
                "it is not installed",
                "pip install 'lipsync-rt[openvino]' or use --runtime onnxruntime",
            ) from None
        self._core, self._path = ov.Core(), str(path)
        self._cfg: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._cfg["INFERENCE_NUM_THREADS"] = threads
        self._compiled = self._core.compile_model(self._core.read_model(self._path), "CPU", self._cfg)
        self._request = self._compiled.create_infer_request()
        self.output_names = [o.get_any_name() for o in self._compiled.outputs]
        self._batched: dict[int, tuple] = {}  # batch size -> (compiled, request), made on first use

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        compiled, request = self._for_batch(len(next(iter(feeds.values()))))
        # share_inputs: the request reads the callers' arrays in place (the decoder's face
        # features are 1.16 MB a frame) instead of copying them into its own tensors first;
        # outputs stay copies, since the next call would overwrite them under a waiting session.
        res = request.infer(feeds, share_inputs=True)
        return [res[o] for o in compiled.outputs]

    def _for_batch(self, batch: int):
        """The int8 decoder IR is saved at static batch-1 shapes (see export.quantize); a shared
        generator service runs batches, so the graph is reshaped and compiled once per batch size
        (checked: outputs equal the batch-1 graph's exactly)."""
        shape = self._compiled.inputs[0].get_partial_shape()
        if shape.is_dynamic or batch == shape[0].get_length():
            return self._compiled, self._request
        if batch not in self._batched:
            model = self._core.read_model(self._path)
            model.reshape(
                {i.get_any_name(): [batch] + list(i.get_partial_shape().to_shape())[1:] for i in model.inputs}
            )
            compiled = self._core.compile_model(model, "CPU", self._cfg)
            self._batched[batch] = (compiled, compiled.create_infer_request())
        return self._batched[batch]

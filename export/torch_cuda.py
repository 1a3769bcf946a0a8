"""The torch CUDA runtime: the generator's decoder in PyTorch on an NVIDIA GPU, fp16, channels-last,
replayed as CUDA graphs. The one module on the live path that loads torch, and only when the
ladder or a pinned `--runtime torch-cuda` picks it (export.runtime imports it lazily): a CPU live
process never reaches it (see the import contracts in pyproject.toml).

Most GPU boxes already have torch with CUDA, while onnxruntime-gpu needs its own install; this is
the GPU runtime they can use as they are. It runs what the ONNX graphs run (the same checkpoint,
the same row-cropped decode) so the ladder's gate judges it against the same fp32 references.

A candidate is a small descriptor file beside the exports (`<variant>-torch-cuda-<precision>.json`:
the checkpoint, its key, the face size, the variant): there is no graph file to write, the
weights are read from the checkpoint when the runner is made.

Per batch size, one CUDA graph is captured over preallocated device tensors: a call copies the
numpy inputs into them (one host-to-device copy), replays the graph, and copies the output out
(one device-to-host copy); nothing else is allocated per frame.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from export.metadata import SKIPS, variant_first_row
from models.errors import LipsyncError

PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
WARMUP_RUNS = 3  # before capture: cuDNN picks its kernels on the first runs


def unavailable_reason() -> str | None:
    """Why torch cannot run the generator on a GPU here, in a few words; None when it can."""
    if not torch.cuda.is_available():
        build = torch.version.cuda
        return f"torch {torch.__version__} " + ("sees no CUDA device" if build else "is a CPU-only build")
    return None


def write_descriptor(dst: Path, checkpoint: str | os.PathLike, sha: str, face_size_px: int, variant: str) -> Path:
    """The file a torch-cuda candidate is known by (written atomically)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    spec = {"checkpoint": str(Path(checkpoint).resolve()), "sha": sha, "face_size_px": face_size_px, "variant": variant}
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, dst)
    return dst


class _Graph:
    """One captured CUDA graph over fixed-shape device tensors."""

    def __init__(self, fn, example: list[torch.Tensor]):
        self.inputs = [t.clone() for t in example]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.output = fn(*self.inputs)

    def __call__(self, arrays: list[np.ndarray]) -> torch.Tensor:
        for dev, host in zip(self.inputs, arrays):
            dev.copy_(torch.from_numpy(np.ascontiguousarray(host)), non_blocking=False)
        self.graph.replay()
        return self.output


class TorchCudaRunner:
    """A decoder (or face encoder) variant on the GPU; numpy feeds in, numpy outputs out, like the
    ONNX Runtime and OpenVINO runners (export.runtime)."""

    on_gpu = True

    def __init__(self, descriptor: str | os.PathLike, precision: str = "fp16", cuda_graphs: bool = True):
        reason = unavailable_reason()
        if reason is not None:
            raise LipsyncError(
                "--runtime torch-cuda", "torch with a CUDA device", reason, "use --runtime auto or a CPU runtime"
            )
        if precision not in PRECISIONS:
            raise LipsyncError("--precision", "fp16 or fp32 with torch-cuda", precision, "pick one of those")
        from models.checkpoint import load_torch_generator

        spec = json.loads(Path(descriptor).read_text())
        self.variant = spec["variant"]
        self.dtype = PRECISIONS[precision]
        net = load_torch_generator(spec["checkpoint"], spec["face_size_px"])
        self.net = net.to("cuda", self.dtype).to(memory_format=torch.channels_last).eval()
        self.first_row = variant_first_row(self.variant)
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple, _Graph] = {}
        self.output_names = list(SKIPS) if self.variant == "face_encoder" else ["out"]

    def _fn(self):
        net, first_row = self.net, self.first_row
        if self.variant == "face_encoder":
            return lambda face: tuple(net.encode_face(face))
        if first_row:
            return lambda mel, *skips: net.decode_rows(mel, list(skips), first_row)
        return lambda mel, *skips: net.decode(mel, list(skips))

    def _device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a)).to("cuda", self.dtype)
        return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t

    def __call__(self, feeds: dict) -> list[np.ndarray]:
        names = ["face"] if self.variant == "face_encoder" else ["mel", *[k for k in SKIPS if k in feeds]]
        arrays = [np.asarray(feeds[k], np.float32) for k in names]
        fn = self._fn()
        if not self.cuda_graphs:
            with torch.inference_mode():
                out = fn(*[self._device(a) for a in arrays])
        else:
            key = tuple(a.shape for a in arrays)
            if key not in self._graphs:
                self._graphs[key] = _Graph(fn, [self._device(a) for a in arrays])
            host = np.float16 if self.dtype == torch.float16 else np.float32  # half the bytes over the bus
            out = self._graphs[key]([a.astype(host) for a in arrays])
        outs = out if isinstance(out, tuple) else (out,)
        return [o.float().cpu().numpy() for o in outs]

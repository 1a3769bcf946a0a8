"""Safe loading of Wav2Lip-family checkpoints in every on-disk shape seen in the wild.

Shapes accepted: the official training dict (`{"state_dict": ..., "optimizer": ...}`), a bare
state dict, keys with or without DataParallel's `module.` prefix, zip or legacy pickle format.
Only `torch.load(..., weights_only=True)` is ever used: a file that needs arbitrary code to
unpickle is refused.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from models.errors import LipsyncError

NETWORKS = {
    "Wav2Lip": ("a Wav2Lip generator (wav2lip.pth / wav2lip_gan.pth)", "models.wav2lip", "Wav2Lip"),
    "SyncNet_color": ("the SyncNet lip-sync expert (lipsync_expert.pth)", "models.syncnet", "SyncNetColor"),
    "Wav2Lip_disc_qual": (
        "the visual-quality discriminator (visual_quality_disc.pth)",
        "models.disc",
        "Wav2LipDiscQual",
    ),
}


def _network(name: str) -> nn.Module:
    _, module, cls = NETWORKS[name]
    return getattr(importlib.import_module(module), cls)()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {key: tensor} dict with `module.` stripped."""
    path = Path(path)
    what = f"checkpoint {path}"
    if not path.is_file():
        raise LipsyncError(
            what,
            "a .pth file",
            "no such file",
            "check the path, or put the file in checkpoints/ (see checkpoints/README.md)",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "not an allowed global" in msg:
            first = next((ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), "")
            raise LipsyncError(
                what,
                "plain tensors only",
                f"a pickle that would run code on load ({first[:120]})",
                "refused for safety; use an official checkpoint or re-save its state_dict",
            ) from None
        raise LipsyncError(
            what,
            "a complete PyTorch checkpoint",
            f"unreadable pickle data ({msg[:80]})",
            "the file is truncated or corrupt; download it again",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        detail = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise LipsyncError(
            what, "a complete PyTorch checkpoint", f"a truncated or corrupt file ({detail})", "download it again"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LipsyncError(
            what,
            "a dict of tensors (optionally under 'state_dict')",
            f"{type(obj).__name__} without tensors",
            "pass a Wav2Lip-family .pth file",
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def identify(state: dict[str, torch.Tensor]) -> str | None:
    """Which of the three networks this state dict belongs to, by exact key set."""
    keys = set(state)
    for name in NETWORKS:
        if keys == set(_network(name).state_dict()):
            return name
    return None


def load_network(path: str | os.PathLike, expect: str = "Wav2Lip") -> nn.Module:
    """Load `path` into a fresh `expect` network in eval mode, with strict key and shape checks."""
    state = read_state_dict(path)
    net = _network(expect)
    expected_keys = set(net.state_dict())
    if set(state) != expected_keys:
        found = identify(state)
        found_desc = (
            NETWORKS[found][0]
            if found
            else (
                f"{len(set(state) & expected_keys)} of {len(expected_keys)} expected tensor names "
                f"({len(state)} tensors in all)"
            )
        )
        raise LipsyncError(f"checkpoint {path}", NETWORKS[expect][0], found_desc, "pass the matching checkpoint file")
    for k, v in net.state_dict().items():
        if state[k].shape != v.shape:
            raise LipsyncError(
                f"checkpoint {path}",
                f"{k} of shape {tuple(v.shape)}",
                f"shape {tuple(state[k].shape)}",
                "the file is not an official-architecture checkpoint",
            )
    net.load_state_dict(state, strict=True)
    return net.eval()


def load_torch_generator(path: str | os.PathLike) -> nn.Module:
    """The Wav2Lip generator as a torch module in eval mode, for export and the torch backend (the
    ONNX generator the engine runs comes from realtime.generator.load_generator)."""
    return load_network(path, "Wav2Lip")

"""Safe loading of Wav2Lip-family checkpoints in every on-disk shape seen in the wild.

Shapes accepted: the official training dict (`{"state_dict": ..., "optimizer": ...}`), a bare
state dict, keys with or without DataParallel's `module.` prefix, zip or legacy pickle format.
Only `torch.load(..., weights_only=True)` is ever used: a file that needs arbitrary code to
unpickle is refused. Generators of every known layout (models.layouts: the original 96 and the
community HD ones) are told apart by their tensor names and shapes.
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
from models.layouts import LAYOUTS, Layout, detect, face_size_for

NETWORKS = {
    "Wav2Lip": ("a Wav2Lip generator (wav2lip.pth / wav2lip_gan.pth)", "models.wav2lip", "Wav2Lip"),
    "SyncNet_color": ("the SyncNet lip-sync expert (lipsync_expert.pth)", "models.syncnet", "SyncNetColor"),
    "Wav2Lip_disc_qual": (
        "the visual-quality discriminator (visual_quality_disc.pth)",
        "models.disc",
        "Wav2LipDiscQual",
    ),
}


def _network(name: str, face_size_px: int = 0) -> nn.Module:
    """A fresh network: one of NETWORKS by name, or a generator by its layout's value
    (`hd-256`, `sam`, ...; `face_size_px` for the SAM layout)."""
    if name in NETWORKS:
        _, module, cls = NETWORKS[name]
        return getattr(importlib.import_module(module), cls)()
    layout = Layout(name)
    info = LAYOUTS[layout]
    net_cls = getattr(importlib.import_module(info.module), info.cls)
    return net_cls(face_size_for(layout, face_size_px)) if info.face_size_px is None else net_cls()


def generator_layout(state: dict[str, torch.Tensor]) -> Layout | None:
    return detect({k: tuple(v.shape) for k, v in state.items()})


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
    """Which network this state dict belongs to: an HD generator layout's value (by its telling
    tensors), else one of the three official networks by exact key set."""
    layout = generator_layout(state)
    if layout is not None and layout is not Layout.W96:
        return layout.value
    keys = set(state)
    for name in NETWORKS:
        if keys == set(_network(name).state_dict()):
            return name
    return None


def _describe(name: str) -> str:
    return NETWORKS[name][0] if name in NETWORKS else LAYOUTS[Layout(name)].description


def load_network(path: str | os.PathLike, expect: str = "Wav2Lip") -> nn.Module:
    """Load `path` into a fresh `expect` network in eval mode, with strict key and shape checks."""
    return _load_into(_network(expect), read_state_dict(path), path, NETWORKS[expect][0])


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], path, description: str) -> nn.Module:
    """`state` into `net` with strict key and shape checks, each failure one line."""
    expected_keys = set(net.state_dict())
    if set(state) != expected_keys:
        found = identify(state)
        found_desc = (
            _describe(found)
            if found
            else (
                f"{len(set(state) & expected_keys)} of {len(expected_keys)} expected tensor names "
                f"({len(state)} tensors in all)"
            )
        )
        raise LipsyncError(f"checkpoint {path}", description, found_desc, "pass the matching checkpoint file")
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


def load_torch_generator(path: str | os.PathLike, face_size_px: int = 0) -> nn.Module:
    """The generator in `path`, of whichever known layout it is, as a torch module in eval mode, for
    export and the torch backend (the ONNX generator the engine runs comes from
    realtime.generator.load_generator). `face_size_px`: for the SAM layout, whose weights do not
    fix it (a layout that fixes it refuses another)."""
    state = read_state_dict(path)
    layout = generator_layout(state)
    if layout is None or layout is Layout.W96:
        if face_size_px:
            face_size_for(Layout.W96, face_size_px)
        return _load_into(_network("Wav2Lip"), state, path, NETWORKS["Wav2Lip"][0])
    return _load_into(_network(layout.value, face_size_px), state, path, LAYOUTS[layout].description)

"""Pretrained weight sources: read a state dict from a file or bundle and map its key names onto ours.

Loading maps the source naming onto ours (``encoder.*``, ``decoder.*``, ``segmentation_head.*``):

=====================  ====================================================  ==================================
source                 example key                                           becomes
=====================  ====================================================  ==================================
FlexibleUNet / bundle  ``encoder.layer1.0.conv1.weight``                     unchanged
MONAI / torchvision    ``layer1.0.conv1.weight``, ``conv1.weight``           ``encoder.`` + key
ResNet
MedicalNet             ``module.layer1.0.conv1.weight``                      ``module.`` dropped, then as above
EfficientNet-PyTorch   ``_blocks.5._expand_conv.weight``                     ``encoder._blocks.3.5._expand_...``
=====================  ====================================================  ==================================

Everything is read with ``torch.load(..., weights_only=True)`` or ``safetensors``; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets.resnet import resnet_params

__all__ = ["STATE_SCOPES", "align_state_dict", "read_class_names", "read_state_dict", "state_layout"]

_CHECKPOINT_KEYS = ("network", "model", "state_dict", "model_state_dict", "net")
STATE_SCOPES = ("encoder.", "decoder.", "segmentation_head.")
_PathLike = str | os.PathLike


# ------------------------------------------------------------------------------------------------ reading sources
def _bundle_member(zf: zipfile.ZipFile, suffix: str) -> str | None:
    names = [n for n in zf.namelist() if n == suffix or n.endswith("/" + suffix)]
    return min(names, key=len) if names else None


def _torch_load(f: Any, name: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{name}: not loadable with torch.load(weights_only=True) ({type(e).__name__}: {str(e)[:200]}). "
            "Expected a state dict of tensors. Fix: re-save it with torch.save(model.state_dict(), path)."
        ) from e


def _extract_state(obj: Any, name: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # unwrap {"network": {...}}, {"state_dict": {...}}, ...
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not state:
        got = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{name}: no tensors found. Expected a state dict, or a checkpoint dict with one of the keys "
            f"{list(_CHECKPOINT_KEYS)}; got {got}. Fix: point to the model weights file."
        )
    return state


def read_state_dict(source: _PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a bundle directory or zip (``models/model.pt``), a ``.pt``/``.pth`` file (plain state
    dict or checkpoint dict with a ``network``/``model``/``state_dict`` key) or a ``.safetensors`` file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"Pretrained source {str(path)!r} does not exist. Expected a bundle directory or zip, or a "
            ".pt/.pth/.safetensors file. Fix: check the path."
        )
    if path.is_dir():
        for rel in ("models/model.pt", "models/model.safetensors", "models/model.pth"):
            if (path / rel).is_file():
                return read_state_dict(path / rel)
        found = sorted(p.name for p in (path / "models").glob("*")) if (path / "models").is_dir() else []
        raise FileNotFoundError(
            f"Bundle directory {str(path)!r}: expected models/model.pt, found models/ = {found}. "
            "Fix: train or import the bundle first, or pass the checkpoint file itself."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            member = _bundle_member(zf, "models/model.pt")
            if member is not None:  # a bundle zip (a torch .pt file is a zip too, without this member)
                return _extract_state(_torch_load(io.BytesIO(zf.read(member)), f"{path}!{member}"), f"{path}!{member}")
            if path.suffix == ".zip":
                raise FileNotFoundError(
                    f"Bundle zip {str(path)!r}: expected a member '<bundle>/models/model.pt', found none. "
                    "Fix: pack the bundle with its trained weights (python -m pipeline pack)."
                )
    return _extract_state(_torch_load(path, str(path)), str(path))


def read_class_names(source: _PathLike) -> list[str] | None:
    """Class names from a bundle's ``configs/metadata.json`` (``network_data_format.outputs.pred.channel_def``)."""
    path = Path(source)
    try:
        if path.is_dir():
            meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = _bundle_member(zf, "configs/metadata.json")
                if member is None:
                    return None
                meta = json.loads(zf.read(member))
        else:
            return None
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        return [str(channel_def[str(i)]) for i in range(len(channel_def))]
    except (OSError, KeyError, ValueError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ key mapping
def align_state_dict(
    state: Mapping[str, torch.Tensor], target_keys: Iterable[str]
) -> tuple[str, list[tuple[str, str, str, torch.Tensor]]]:
    """Map source key names onto FlexibleUNet names.

    Returns:
        ``(format, [(source_key, source_key_without_module_prefix, target_key, tensor), ...])``.
    """
    keys = list(state)
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    names = [k[len(strip) :] for k in keys]
    if any(n.startswith(STATE_SCOPES) for n in names):
        fmt, rename = "flexibleunet", (lambda n: n)
    elif any(n.startswith(("_conv_stem.", "_blocks.")) for n in names):
        if any(re.match(r"_blocks\.\d+\.\d+\.", n) for n in names):
            fmt, rename = "monai-efficientnet", (lambda n: "encoder." + n)
        else:
            stack = {}  # global block index -> MONAI stack index, read off the target names
            for t in target_keys:
                m = re.match(r"encoder\._blocks\.(\d+)\.(\d+)\.", t)
                if m:
                    stack[m.group(2)] = m.group(1)

            def rename(n: str) -> str:
                m = re.match(r"_blocks\.(\d+)\.(.*)", n)
                return (
                    f"encoder._blocks.{stack.get(m.group(1), '?')}.{m.group(1)}.{m.group(2)}" if m else "encoder." + n
                )

            fmt = "efficientnet-pytorch"
    elif any(n.startswith(("conv1.", "layer1.")) for n in names):
        fmt, rename = ("medicalnet-resnet" if strip else "resnet"), (lambda n: "encoder." + n)
    else:
        fmt, rename = "unknown", (lambda n: n)
    return fmt, [(k, n, rename(n), state[k]) for k, n in zip(keys, names, strict=True)]


def state_layout(keys: Iterable[str]) -> str:
    blocks: dict[str, int] = {}
    bottleneck = False
    for k in keys:
        m = re.match(r"encoder\.(layer\d|_blocks\.\d+)\.(\d+)\.", k)
        if m:
            blocks[m.group(1)] = max(blocks.get(m.group(1), 0), int(m.group(2)) + 1)
            bottleneck |= ".conv3." in k
    if not blocks or not any(k.startswith("layer") for k in blocks):
        return f"{len(blocks)} block stacks" if blocks else "no encoder blocks"
    layers = [blocks.get(f"layer{i}", 0) for i in range(1, 5)]
    kind = "bottleneck" if bottleneck else "basic"
    name = next((n for n, p in resnet_params.items() if p[1] == layers and p[0] == kind), "unknown resnet")
    return f"{name}-like ({layers} {kind} blocks)"

"""What batch inference is built from: the network's weights, the device and the split preprocessing chain.

Weights load with ``torch.load(weights_only=True)`` (:func:`load_checkpoint`); the preprocessing chain is split into
its loading head and the invertible tail that maps predictions back to each input's grid. The engine is
:class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from monai import transforms as mt
from torch import nn

from pipeline.inference.report import failure_reason

__all__ = ["load_checkpoint"]


def load_checkpoint(network: nn.Module, path: str | Path) -> nn.Module:
    """Load weights with ``torch.load(weights_only=True)``: a state dict, or a dict holding one under
    ``model``/``network``/``state_dict`` (a DDP ``module.`` prefix is removed).

    Raises:
        FileNotFoundError: no file (the message says to train the bundle or pass ``--checkpoint``).
        ValueError: not loadable safely, or the weights do not fit ``network``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No model weights at {path}: train the bundle first (python -m monai.bundle run training ...) "
            "or pass --checkpoint PATH."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: cannot be loaded with weights_only=True ({failure_reason(e)}); save a plain state dict."
        ) from e
    if isinstance(obj, Mapping):
        for key in ("model", "network", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: expected a state dict (or one under 'model'/'network'/'state_dict'), got {type(obj)}."
        )
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not fit network_def ({' '.join(str(e).split())[:500]}). Fix: use the configs the "
            "checkpoint was trained with (backbone, decoder_channels, class_names) or the matching checkpoint."
        ) from e
    return network


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def split_preprocessing(pre: mt.Compose) -> tuple[mt.Compose, mt.Compose, mt.Compose]:
    """``(load, after_load, tail)``: the leading ``LoadImaged``/``EnsureChannelFirstd`` (from files), the same
    without ``LoadImaged`` (for volumes read from DICOM), and the rest, which is what gets inverted."""
    chain = list(pre.flatten().transforms)
    n = 0
    while n < len(chain) and isinstance(chain[n], (mt.LoadImaged, mt.EnsureChannelFirstd)):
        n += 1
    if not chain or not isinstance(chain[0], mt.LoadImaged):
        names = [type(t).__name__ for t in chain[:3]]
        raise ValueError(f"'preprocessing' must start with LoadImaged (then EnsureChannelFirstd), got {names}.")
    head = chain[:n]
    return mt.Compose(head), mt.Compose([t for t in head if not isinstance(t, mt.LoadImaged)]), mt.Compose(chain[n:])

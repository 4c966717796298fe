"""Intensity normalisation by name (``percentile``, ``window``, ``zscore``, ``clip_zscore``, ``percentile_zscore``).

``clip_zscore`` is nnU-Net's CT normalisation (clip to the dataset's foreground 0.5/99.5 percentiles, then z-score
with the foreground mean/std, all fixed numbers found by ``python -m pipeline plan``); ``percentile_zscore`` is a
per-case normalisation robust to heavy tails for MR and other modalities (clip each case to its own percentiles,
then z-score it).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.config import KeysCollection

__all__ = ["INTENSITY_MODES", "ClipZScored", "PercentileZScored", "intensity_transform"]


INTENSITY_MODES = ("percentile", "window", "zscore", "clip_zscore", "percentile_zscore")


def _per_channel(name: str, value: float | Sequence[float], channels: int) -> list[float]:
    values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != channels:
        raise ValueError(
            f"intensity {name!r} must be one number or one per channel ({channels}), got {value!r}. "
            "Fix: plan the dataset again (python -m pipeline plan) or give one value per image channel."
        )
    return values


def _float_copy(img: Any) -> Any:
    """A float32 copy (a ``MetaTensor`` keeps its meta data: affine, file name)."""
    return img.clone().float() if isinstance(img, torch.Tensor) else np.array(img, dtype=np.float32)


class ClipZScored(mt.MapTransform):
    """Clip each channel to fixed ``[a_min, a_max]``, then ``(x - mean) / std`` (nnU-Net's CT normalisation).

    Args:
        keys: image keys, arrays ``(C, *spatial)``.
        a_min, a_max: clip range, one number or one per channel (the dataset's foreground 0.5/99.5 percentiles).
        mean, std: the dataset's foreground mean and standard deviation, one number or one per channel.
    """

    def __init__(
        self,
        keys: KeysCollection,
        a_min: float | Sequence[float],
        a_max: float | Sequence[float],
        mean: float | Sequence[float],
        std: float | Sequence[float],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.a_min, self.a_max, self.mean, self.std = a_min, a_max, mean, std
        n = max(len(v) if isinstance(v, Sequence) else 1 for v in (a_min, a_max, mean, std))
        lo, hi, sd = _per_channel("a_min", a_min, n), _per_channel("a_max", a_max, n), _per_channel("std", std, n)
        _per_channel("mean", mean, n)
        if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)) or any(s <= 0 for s in sd):
            raise ValueError(
                f"intensity 'clip_zscore' needs a_min < a_max and std > 0, got a_min={a_min!r}, a_max={a_max!r}, "
                f"std={std!r}. Fix: plan the dataset again (python -m pipeline plan)."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            n = int(img.shape[0])
            out = _float_copy(img)
            for c, (lo, hi, mu, sd) in enumerate(
                zip(
                    _per_channel("a_min", self.a_min, n),
                    _per_channel("a_max", self.a_max, n),
                    _per_channel("mean", self.mean, n),
                    _per_channel("std", self.std, n),
                    strict=True,
                )
            ):
                out[c] = (out[c].clip(lo, hi) - mu) / sd
            d[key] = out
        return d


class PercentileZScored(mt.MapTransform):
    """Per case and channel: clip to the case's own ``lower``/``upper`` percentiles, then z-score.

    Robust to heavy tails (a few voxels at 1e6 move neither the clip range much nor, after clipping, the mean and
    std), and to scanners whose intensity scales differ from case to case (MR).

    Args:
        keys: image keys, arrays ``(C, *spatial)``.
        lower, upper: percentiles (0-100) of the case's voxels, per channel.
    """

    def __init__(
        self, keys: KeysCollection, lower: float = 0.5, upper: float = 99.5, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not 0 <= lower < upper <= 100:
            raise ValueError(f"intensity 'percentile_zscore' needs 0 <= lower < upper <= 100, got {lower}, {upper}.")
        self.lower, self.upper = float(lower), float(upper)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = _float_copy(d[key])
            for c in range(int(out.shape[0])):
                x = out[c]
                flat = x.detach().cpu().numpy().ravel() if isinstance(x, torch.Tensor) else x.ravel()
                lo, hi = (float(v) for v in np.percentile(flat, [self.lower, self.upper]))
                x = x.clip(lo, hi)
                std = float(x.std())
                out[c] = (x - x.mean()) / (std if std > 0 else 1.0)
            d[key] = out
        return d


def intensity_transform(keys: str | Sequence[str] = "image", mode: str = "percentile", **kwargs: Any) -> mt.Transform:
    """Intensity normalisation by name.

    Args:
        keys: image keys.
        mode: ``percentile`` (robust min/max to [0, 1], kwargs ``lower``=0.5, ``upper``=99.5; works across sites
            with different scanners), ``window`` (CT window, kwargs ``a_min``, ``a_max``), ``zscore``
            (per channel, over non-zero voxels), ``clip_zscore`` (nnU-Net CT: kwargs ``a_min``, ``a_max``,
            ``mean``, ``std``, numbers or one per channel; :class:`ClipZScored`) or ``percentile_zscore`` (per case:
            kwargs ``lower``=0.5, ``upper``=99.5; :class:`PercentileZScored`).
    """
    if mode == "percentile":
        return mt.ScaleIntensityRangePercentilesd(
            keys,
            lower=kwargs.get("lower", 0.5),
            upper=kwargs.get("upper", 99.5),
            b_min=0.0,
            b_max=1.0,
            clip=True,
            channel_wise=True,
        )
    if mode == "window":
        if "a_min" not in kwargs or "a_max" not in kwargs:
            raise ValueError("intensity mode 'window' needs 'a_min' and 'a_max' (e.g. -175 and 250 for abdomen CT).")
        return mt.ScaleIntensityRanged(
            keys, a_min=kwargs["a_min"], a_max=kwargs["a_max"], b_min=0.0, b_max=1.0, clip=True
        )
    if mode == "zscore":
        return mt.NormalizeIntensityd(keys, nonzero=kwargs.get("nonzero", True), channel_wise=True)
    if mode == "clip_zscore":
        missing = [k for k in ("a_min", "a_max", "mean", "std") if k not in kwargs]
        if missing:
            raise ValueError(
                f"intensity mode 'clip_zscore' needs 'a_min', 'a_max', 'mean' and 'std', missing {missing}. Fix: "
                "python -m pipeline plan DATASET writes them (the dataset's foreground percentiles, mean and std)."
            )
        return ClipZScored(keys, kwargs["a_min"], kwargs["a_max"], kwargs["mean"], kwargs["std"])
    if mode == "percentile_zscore":
        return PercentileZScored(keys, kwargs.get("lower", 0.5), kwargs.get("upper", 99.5))
    raise ValueError(f"Unknown intensity mode {mode!r}; available: {list(INTENSITY_MODES)}.")

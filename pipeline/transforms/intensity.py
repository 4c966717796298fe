"""Intensity normalisation by name (``percentile``, ``window``, ``zscore``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai import transforms as mt

__all__ = ["INTENSITY_MODES", "intensity_transform"]


INTENSITY_MODES = ("percentile", "window", "zscore")


def intensity_transform(keys: str | Sequence[str] = "image", mode: str = "percentile", **kwargs: Any) -> mt.Transform:
    """Intensity normalisation by name.

    Args:
        keys: image keys.
        mode: ``percentile`` (robust min/max to [0, 1], kwargs ``lower``=0.5, ``upper``=99.5; works across sites
            with different scanners), ``window`` (CT window, kwargs ``a_min``, ``a_max``) or ``zscore``
            (per channel, over non-zero voxels).
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
    raise ValueError(f"Unknown intensity mode {mode!r}; available: {list(INTENSITY_MODES)}.")

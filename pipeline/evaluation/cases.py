"""Naming of evaluated cases: class names from lists or ``channel_def`` mappings, spacing from metadata (case ids:
:func:`pipeline.data.datalist.case_id`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing

__all__ = ["normalize_class_names", "spacing_of"]


def normalize_class_names(class_names: Sequence[str] | Mapping[Any, str]) -> dict[int, str]:
    """``["background", "organ"]`` or a ``channel_def`` like ``{"0": "background"}`` -> ``{0: "background", ...}``."""
    if isinstance(class_names, Mapping):
        try:
            out = {int(k): str(v) for k, v in class_names.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"'class_names' keys must be class indices like '1', got {list(class_names)!r}.") from e
    elif isinstance(class_names, Sequence) and not isinstance(class_names, str):
        out = {i: str(v) for i, v in enumerate(class_names)}
    else:
        raise TypeError(f"'class_names' must be a list or a mapping index -> name, got {class_names!r}.")
    if not out or len(set(out.values())) != len(out):
        raise ValueError(f"'class_names' must be non-empty with unique names, got {class_names!r}.")
    return out


def spacing_of(x: Any) -> tuple[float, ...] | None:
    """Voxel spacing (mm) of a channel-first ``(C, H, W[, D])`` MetaTensor from its affine; ``None`` otherwise."""
    if not isinstance(x, MetaTensor):
        return None
    r = x.ndim - 1
    affine = x.affine
    if affine.ndim != 2 or affine.shape[0] - 1 < r:
        return None
    return tuple(float(s) for s in affine_to_spacing(affine, r=r))

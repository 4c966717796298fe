"""Class-balanced patch sampling that survives cases missing a class, and its validation (:func:`check_sampling`).

Sampling indices are pre-computed once per case (``ClassesToIndicesd`` / ``FgBgToIndicesd``) so drawing a patch
does not rescan the label. The samplers (:class:`ClassBalancedCropd`, :class:`PosNegCropd`) survive cases without
foreground or missing a class (see ``docs/class-imbalance.md``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor
from monai.transforms.utils import generate_label_classes_crop_centers, map_classes_to_indices

__all__ = [
    "SAMPLING_MODES",
    "ClassBalancedCropd",
    "PosNegCropd",
    "check_sampling",
    "effective_ratios",
    "sampling_transforms",
]

logger = logging.getLogger(__name__)


SAMPLING_MODES = ("classes", "posneg", "uniform")


def _source_name(x: Any) -> str:
    """File a (label) tensor was loaded from, for messages; ``<in memory>`` when unknown."""
    meta = getattr(x, "meta", None)
    src = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(src) if src else "<in memory>"


def effective_ratios(ratios: Sequence[float], class_counts: Sequence[int]) -> tuple[list[float], str | None]:
    """Per-case patch-centre ratios: classes absent from the case get 0; never all zero.

    Args:
        ratios: configured ratios, one per class (background first).
        class_counts: voxels (candidate centres) of each class in this case.

    Returns:
        ``(ratios, fallback)``: ``fallback`` is None when some class with a positive ratio is present, else
        ``"background"`` (only background centres: the case still contributes background patches),
        ``"present"`` (every present class equally) or ``"anywhere"`` (no class present: any voxel).
    """
    out = [float(r) if n > 0 else 0.0 for r, n in zip(ratios, class_counts, strict=True)]
    if sum(out) > 0:
        return out, None
    if class_counts[0] > 0:
        return [1.0] + [0.0] * (len(out) - 1), "background"
    if any(n > 0 for n in class_counts):
        return [1.0 if n > 0 else 0.0 for n in class_counts], "present"
    return out, "anywhere"


class ClassBalancedCropd(mt.RandCropByLabelClassesd):
    """``RandCropByLabelClassesd`` that handles cases missing classes, naming the file.

    MONAI zeroes the ratio of a class absent from a case with an anonymous warning and crashes when every class
    with a positive ratio is absent (``probabilities contain NaN``). Here the ratios are adjusted per case by
    :func:`effective_ratios` (the case still gives background patches) and one warning per file and problem is
    logged, with class names when ``class_names`` is given. Random draws equal MONAI's when nothing is missing.

    Args:
        keys, label_key, spatial_size, ratios, num_classes, num_samples, indices_key, allow_smaller: as
            ``RandCropByLabelClassesd``.
        class_names: class names (background first) for messages.
    """

    def __init__(
        self,
        keys: Any,
        label_key: str,
        spatial_size: Sequence[int] | int,
        ratios: Sequence[float] | None = None,
        num_classes: int | None = None,
        num_samples: int = 1,
        indices_key: str | None = None,
        allow_smaller: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            keys,
            label_key=label_key,
            spatial_size=spatial_size,
            ratios=None if ratios is None else list(ratios),
            num_classes=num_classes,
            num_samples=num_samples,
            indices_key=indices_key,
            allow_smaller=allow_smaller,
            warn=False,
        )
        self.class_names = list(class_names) if class_names is not None else None
        self._warned: set[tuple[str, str]] = set()

    def _name(self, c: int) -> str:
        return f"{self.class_names[c]!r} ({c})" if self.class_names and c < len(self.class_names) else f"{c}"

    def _warn_once(self, source: str, message: str) -> None:
        if (source, message) not in self._warned:
            self._warned.add((source, message))
            logger.warning("%s: %s", source, message)

    def randomize(  # type: ignore[override]
        self, label: torch.Tensor, indices: Sequence[Any] | None = None, image: torch.Tensor | None = None
    ) -> None:
        crop = self.cropper
        if indices is None:
            indices = map_classes_to_indices(label, crop.num_classes, image, crop.image_threshold)
        counts = [len(i) for i in indices]
        ratios = [1.0] * len(counts) if crop.ratios is None else list(crop.ratios)
        if len(ratios) != len(counts):
            raise ValueError(f"'ratios' has {len(ratios)} entries but the label gives {len(counts)} classes.")
        eff, fallback = effective_ratios(ratios, counts)
        source = _source_name(label)
        missing = [c for c, (r, n) in enumerate(zip(ratios, counts, strict=True)) if r > 0 and n == 0]
        if missing:
            names = ", ".join(self._name(c) for c in missing)
            self._warn_once(source, f"no voxels of class {names}; no patch of this case is centred there.")
        if fallback == "background":
            self._warn_once(source, "no class with a positive ratio is present; drawing background patches.")
        elif fallback == "present":
            msg = "neither background nor a class with a positive ratio is present; drawing patches on the others."
            self._warn_once(source, msg)
        shape = label.peek_pending_shape() if isinstance(label, MetaTensor) else label.shape[1:]
        if fallback == "anywhere":
            self._warn_once(source, f"no voxel of any class 0..{len(counts) - 1}; drawing patches anywhere.")
            indices, eff = [np.arange(int(np.prod(shape)))], [1.0]
        crop.centers = generate_label_classes_crop_centers(
            crop.spatial_size, crop.num_samples, shape, indices, eff, crop.R, crop.allow_smaller, warn=False
        )


class PosNegCropd(mt.RandCropByPosNegLabeld):
    """``RandCropByPosNegLabeld`` whose warning for a case without foreground names the file (logged once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warned: set[str] = set()

    def randomize(  # type: ignore[override]
        self,
        label: torch.Tensor | None = None,
        fg_indices: Any = None,
        bg_indices: Any = None,
        image: torch.Tensor | None = None,
    ) -> None:
        if fg_indices is not None and len(fg_indices) == 0:
            source = _source_name(label)
            if source not in self._warned:
                self._warned.add(source)
                logger.warning("%s: no foreground voxels; drawing background patches only for this case.", source)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Num foregrounds")
            super().randomize(label=label, fg_indices=fg_indices, bg_indices=bg_indices, image=image)


def check_sampling(
    num_classes: int,
    sampling: str = "classes",
    ratios: Sequence[float] | None = None,
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 4,
    class_names: Sequence[str] | None = None,
) -> None:
    """Validate the sampling settings of a training chain (2D and 3D alike); raises ``ValueError`` naming the key.

    Args: as :func:`sampling_transforms`. ``ratios`` need ``num_classes`` entries, >= 0, not all 0; ``pos``/``neg``
    >= 0, not both 0; ``class_names`` ``num_classes`` entries; ``num_samples`` >= 1.
    """
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"Unknown 'sampling' {sampling!r}; available: {list(SAMPLING_MODES)}.")
    if num_classes < 2:
        raise ValueError(f"'num_classes' must be >= 2 (background + at least one class), got {num_classes}.")
    if ratios is not None and len(ratios) != num_classes:
        raise ValueError(f"'ratios' must have num_classes={num_classes} entries, got {list(ratios)!r}.")
    if ratios is not None and (min(ratios) < 0 or sum(ratios) <= 0):
        raise ValueError(f"'ratios' must be >= 0 with at least one > 0, got {list(ratios)!r}; e.g. [1, 1, 2, 4].")
    if min(pos, neg) < 0 or pos + neg <= 0:
        raise ValueError(f"'pos' and 'neg' must be >= 0 and not both 0, got pos={pos!r}, neg={neg!r}.")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"'class_names' must have num_classes={num_classes} entries, got {list(class_names)!r}.")
    if num_samples < 1:
        raise ValueError(f"'num_samples' must be >= 1, got {num_samples}.")


def sampling_transforms(
    patch: Sequence[int],
    num_classes: int,
    sampling: str = "classes",
    ratios: Sequence[float] | None = None,
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 4,
    class_names: Sequence[str] | None = None,
) -> list[mt.Transform]:
    """Index pre-computation (cached) + the patch sampler of the training chain, keys ``image``/``label``.

    Args:
        patch: patch size in voxels.
        num_classes: classes including background.
        sampling: ``classes`` (:class:`ClassBalancedCropd`, per-class ``ratios``), ``posneg`` (:class:`PosNegCropd`,
            ``pos``/``neg``) or ``uniform`` (``RandSpatialCropSamplesd``: centres anywhere, the baseline).
        ratios: per-class centre ratios, None = equal.
        pos: foreground weight for ``posneg``.
        neg: background weight for ``posneg``.
        num_samples: patches per case per call.
        class_names: names for warnings.

    Raises:
        ValueError: a setting is invalid (:func:`check_sampling`).
    """
    check_sampling(num_classes, sampling, ratios, pos, neg, num_samples, class_names)
    keys = ["image", "label"]
    if sampling == "classes":
        return [
            mt.ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_cls_indices"),
            ClassBalancedCropd(
                keys, "label", patch, ratios, num_classes, num_samples, "label_cls_indices", class_names=class_names
            ),
        ]
    if sampling == "posneg":
        return [
            mt.FgBgToIndicesd("label", fg_postfix="_fg_indices", bg_postfix="_bg_indices"),
            PosNegCropd(
                keys,
                label_key="label",
                spatial_size=patch,
                pos=pos,
                neg=neg,
                num_samples=num_samples,
                fg_indices_key="label_fg_indices",
                bg_indices_key="label_bg_indices",
            ),
        ]
    return [mt.RandSpatialCropSamplesd(keys, roi_size=patch, num_samples=num_samples, random_size=False)]

"""Train / validation / inference transform chains, with class-balanced patch sampling.

The deterministic head of each chain (load → channel first → RAS → spacing → intensity → foreground crop →
pad → sampling indices) is what ``CacheDataset`` caches: MONAI caches up to the first random transform.
Sampling indices are pre-computed once per case (``ClassesToIndicesd`` / ``FgBgToIndicesd``) so drawing a
patch does not rescan the label.

Keys follow ``monai.utils.CommonKeys``: ``image``, ``label``, ``pred``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from monai import transforms as mt

__all__ = [
    "INTENSITY_MODES",
    "SAMPLING_MODES",
    "eval_postprocessing",
    "infer_postprocessing",
    "infer_transforms",
    "intensity_transform",
    "train_transforms",
    "val_transforms",
]

logger = logging.getLogger(__name__)

INTENSITY_MODES = ("percentile", "window", "zscore")
SAMPLING_MODES = ("classes", "posneg")


def _check_sizes(name: str, value: Sequence[Any], spatial_dims: int) -> list[Any]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")
    if isinstance(value, (int, float)):
        return [value] * spatial_dims
    value = list(value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name!r} must have {spatial_dims} entries (spatial_dims), got {value!r}.")
    return value


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
            keys, lower=kwargs.get("lower", 0.5), upper=kwargs.get("upper", 99.5), b_min=0.0, b_max=1.0, clip=True,
            channel_wise=True,
        )
    if mode == "window":
        if "a_min" not in kwargs or "a_max" not in kwargs:
            raise ValueError("intensity mode 'window' needs 'a_min' and 'a_max' (e.g. -175 and 250 for abdomen CT).")
        return mt.ScaleIntensityRanged(keys, a_min=kwargs["a_min"], a_max=kwargs["a_max"], b_min=0.0, b_max=1.0, clip=True)
    if mode == "zscore":
        return mt.NormalizeIntensityd(keys, nonzero=kwargs.get("nonzero", True), channel_wise=True)
    raise ValueError(f"Unknown intensity mode {mode!r}; available: {list(INTENSITY_MODES)}.")


def _load_and_resample(
    keys: list[str], spatial_dims: int, pixdim: Sequence[float] | None, intensity: Mapping[str, Any] | None
) -> list[mt.Transform]:
    has_label = "label" in keys
    chain: list[mt.Transform] = [
        mt.LoadImaged(keys, image_only=True),
        mt.EnsureChannelFirstd(keys),
    ]
    if spatial_dims == 3:
        chain.append(mt.Orientationd(keys, axcodes="RAS"))
    if pixdim is not None:
        pix = _check_sizes("pixdim", pixdim, spatial_dims)
        chain.append(mt.Spacingd(keys, pixdim=pix, mode=("bilinear", "nearest") if has_label else "bilinear"))
    intensity = dict(intensity or {"mode": "percentile"})
    chain.append(intensity_transform("image", **intensity))
    return chain


def train_transforms(
    spatial_dims: int = 3,
    patch_size: Sequence[int] = (64, 64, 32),
    num_classes: int = 4,
    pixdim: Sequence[float] | None = (1.5, 1.5, 2.0),
    intensity: Mapping[str, Any] | None = None,
    sampling: str = "classes",
    ratios: Sequence[float] | None = None,
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 4,
    augment: bool = True,
    crop_foreground: bool = True,
) -> mt.Compose:
    """Training chain: deterministic head (cached) + class-balanced patch sampling + augmentation.

    Args:
        spatial_dims: 2 or 3.
        patch_size: patch size in voxels after resampling, ``spatial_dims`` entries.
        num_classes: number of label classes including background (= network ``out_channels``).
        pixdim: target spacing in mm, or None to keep the native grid.
        intensity: kwargs of :func:`intensity_transform`, e.g. ``{"mode": "window", "a_min": -175, "a_max": 250}``.
        sampling: ``classes`` (``RandCropByLabelClassesd`` with per-class ``ratios``) or ``posneg``
            (``RandCropByPosNegLabeld`` with ``pos``/``neg``).
        ratios: per-class patch-centre ratios (``num_classes`` entries); None = equal for every class.
        pos: foreground weight for ``posneg``.
        neg: background weight for ``posneg``.
        num_samples: patches per case per epoch.
        augment: flips, 90° rotations in-plane, intensity scale/shift and noise.
        crop_foreground: crop to the image's foreground (non-zero after scaling) first.

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path}`` to ``num_samples`` dicts of
        ``image (C, *patch_size)`` and ``label (1, *patch_size)``.
    """
    patch = _check_sizes("patch_size", patch_size, spatial_dims)
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"Unknown 'sampling' {sampling!r}; available: {list(SAMPLING_MODES)}.")
    if num_classes < 2:
        raise ValueError(f"'num_classes' must be >= 2 (background + at least one class), got {num_classes}.")
    if ratios is not None and len(ratios) != num_classes:
        raise ValueError(f"'ratios' must have num_classes={num_classes} entries, got {list(ratios)!r}.")
    if num_samples < 1:
        raise ValueError(f"'num_samples' must be >= 1, got {num_samples}.")
    keys = ["image", "label"]
    chain = _load_and_resample(keys, spatial_dims, pixdim, intensity)
    if crop_foreground:
        chain.append(mt.CropForegroundd(keys, source_key="image", margin=4, allow_smaller=True))
    chain.append(mt.SpatialPadd(keys, spatial_size=patch))
    if sampling == "classes":
        chain.append(mt.ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_cls_indices"))
        chain.append(
            mt.RandCropByLabelClassesd(
                keys, label_key="label", spatial_size=patch, ratios=None if ratios is None else list(ratios),
                num_classes=num_classes, num_samples=num_samples, indices_key="label_cls_indices",
            )
        )
    else:
        chain.append(mt.FgBgToIndicesd("label", fg_postfix="_fg_indices", bg_postfix="_bg_indices"))
        chain.append(
            mt.RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=patch, pos=pos, neg=neg, num_samples=num_samples,
                fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices",
            )
        )
    if augment:
        chain += [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
        chain += [
            mt.RandRotate90d(keys, prob=0.25, max_k=3, spatial_axes=(0, 1)),
            mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
            mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            mt.RandGaussianNoised("image", prob=0.15, std=0.02),
        ]
    chain.append(mt.DeleteItemsd(keys=["label_cls_indices", "label_fg_indices", "label_bg_indices"]))
    chain.append(mt.EnsureTyped(keys, dtype=None, track_meta=False))
    return mt.Compose(chain)


def val_transforms(
    spatial_dims: int = 3,
    pixdim: Sequence[float] | None = (1.5, 1.5, 2.0),
    intensity: Mapping[str, Any] | None = None,
    crop_foreground: bool = True,
) -> mt.Compose:
    """Validation/evaluation chain (deterministic, whole images): ``image (C, ...)``, ``label (1, ...)``."""
    keys = ["image", "label"]
    chain = _load_and_resample(keys, spatial_dims, pixdim, intensity)
    if crop_foreground:
        chain.append(mt.CropForegroundd(keys, source_key="image", margin=4, allow_smaller=True))
    chain.append(mt.EnsureTyped(keys))
    return mt.Compose(chain)


def infer_transforms(
    spatial_dims: int = 3,
    pixdim: Sequence[float] | None = (1.5, 1.5, 2.0),
    intensity: Mapping[str, Any] | None = None,
) -> mt.Compose:
    """Inference chain (image only, invertible so masks go back to the input's grid)."""
    chain = _load_and_resample(["image"], spatial_dims, pixdim, intensity)
    chain.append(mt.EnsureTyped("image"))
    return mt.Compose(chain)


def eval_postprocessing(num_classes: int, label: bool = True) -> mt.Compose:
    """Logits → one-hot ``pred`` (and one-hot ``label``) for MONAI's metrics."""
    chain: list[mt.Transform] = [mt.AsDiscreted("pred", argmax=True, to_onehot=num_classes)]
    if label:
        chain.append(mt.AsDiscreted("label", to_onehot=num_classes))
    return mt.Compose(chain)


def infer_postprocessing(
    preprocessing: mt.InvertibleTransform,
    output_dir: str,
    output_postfix: str = "seg",
    separate_folder: bool = False,
    data_root_dir: str = "",
) -> mt.Compose:
    """Logits → label map in the input's original grid (shape and affine), saved as uint8 NIfTI."""
    return mt.Compose(
        [
            mt.Activationsd("pred", softmax=True),
            mt.Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False, to_tensor=True),
            mt.AsDiscreted("pred", argmax=True),
            mt.SaveImaged(
                "pred", output_dir=output_dir, output_postfix=output_postfix, output_dtype="uint8", resample=False,
                separate_folder=separate_folder, data_root_dir=data_root_dir, print_log=False,
            ),
        ]
    )

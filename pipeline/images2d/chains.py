"""The 2D bundle's transform chains: no resampling or resizing (images of different sizes are fine), images smaller
than the patch zero-padded, class-balanced patch sampling and augmentation from :mod:`pipeline.transforms`.

Keys: ``image`` ``(C, H, W)``, ``label`` ``(1, H, W)`` class indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai import transforms as mt

from pipeline.images2d.files import Image2DReader
from pipeline.images2d.masks import MaskToClassesd, label_channels
from pipeline.transforms import augment_transforms, intensity_transform, sampling_transforms

__all__ = ["infer_transforms_2d", "load_transforms_2d", "train_transforms_2d", "val_transforms_2d"]


def load_transforms_2d(
    keys: Sequence[str] = ("image", "label"),
    in_channels: int = 1,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    num_classes: int | None = None,
) -> list[mt.Transform]:
    """``LoadImaged`` (:class:`Image2DReader`) -> ``EnsureChannelFirstd`` [-> :class:`MaskToClassesd`].

    Returns transforms giving ``image (in_channels, H, W)`` and ``label (1, H, W)``.
    """
    keys = list(keys)
    chain: list[mt.Transform] = [
        mt.LoadImaged("image", reader=Image2DReader(in_channels, channel_dim), image_only=True),  # type: ignore[arg-type]
    ]
    if "label" in keys:
        reader = Image2DReader(label_channels(label_colors), channel_dim, palette_as_index=not label_colors)
        chain.append(mt.LoadImaged("label", reader=reader, image_only=True))  # type: ignore[arg-type]
    chain.append(mt.EnsureChannelFirstd(keys))
    if "label" in keys:
        chain.append(MaskToClassesd("label", label_colors, color_tolerance, num_classes))
    return chain


def _head(
    keys: list[str],
    in_channels: int,
    intensity: Any,
    pixdim: Any,
    label_colors: Any,
    channel_dim: Any,
    tol: float,
    num_classes: int | None = None,
) -> list[mt.Transform]:
    chain = load_transforms_2d(keys, in_channels, label_colors, channel_dim, tol, num_classes)
    if pixdim is not None:
        if len(pixdim) != 2:
            raise ValueError(f"'pixdim' must have 2 entries (spatial_dims=2) or be None, got {list(pixdim)!r}.")
        modes = ("bilinear", "nearest") if "label" in keys else "bilinear"
        chain.append(mt.Spacingd(keys, pixdim=list(pixdim), mode=modes))
    chain.append(intensity_transform("image", **dict(intensity or {"mode": "percentile"})))
    return chain


def train_transforms_2d(
    patch_size: Sequence[int] = (64, 64),
    num_classes: int = 3,
    in_channels: int = 1,
    intensity: Mapping[str, Any] | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    sampling: str = "classes",
    ratios: Sequence[float] | None = None,
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 4,
    augment: bool = True,
    class_names: Sequence[str] | None = None,
    pixdim: Sequence[float] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> mt.Compose:
    """2D training chain: load, intensity scaling (cached), zero-pad to the patch, class-balanced patches, augment.

    Args:
        patch_size: ``(H, W)`` patch in pixels, multiples of 32; smaller images are zero-padded to it.
        num_classes: classes including class 0 (= ``out_channels``).
        in_channels: image channels.
        intensity: kwargs of :func:`pipeline.transforms.intensity_transform`; default per-channel 0.5/99.5
            percentiles to [0, 1].
        label_colors: None for index masks, else class -> colour (:func:`parse_label_colors`).
        sampling, ratios, pos, neg, num_samples, class_names: see :func:`pipeline.transforms.sampling_transforms`.
        augment: flips, 90° rotations, intensity scale/shift, noise.
        pixdim: resample to this pixel size (from the file's affine; 1 for PNG/TIFF/npy); None keeps the grid.
        channel_dim: ``.npy`` channel axis (``"auto"``, 0, -1).
        color_tolerance: see :class:`MaskToClassesd`.

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path}`` to ``num_samples`` dicts of ``image (C, *patch_size)``
        and ``label (1, *patch_size)``.
    """
    patch = list(patch_size)
    if len(patch) != 2:
        raise ValueError(f"'patch_size' must have 2 entries (spatial_dims=2), got {patch!r}.")
    if num_classes < 2:
        raise ValueError(f"'num_classes' must be >= 2 (class 0 + at least one class), got {num_classes}.")
    if ratios is not None and len(ratios) != num_classes:
        raise ValueError(f"'ratios' must have num_classes={num_classes} entries, got {list(ratios)!r}.")
    keys = ["image", "label"]
    chain = _head(keys, in_channels, intensity, pixdim, label_colors, channel_dim, color_tolerance, num_classes)
    chain.append(mt.SpatialPadd(keys, spatial_size=patch))
    chain += sampling_transforms(patch, num_classes, sampling, ratios, pos, neg, num_samples, class_names)
    if augment:
        chain += augment_transforms(keys, spatial_dims=2, rotate_prob=0.5)
    chain.append(mt.DeleteItemsd(keys=["label_cls_indices", "label_fg_indices", "label_bg_indices"]))
    chain.append(mt.EnsureTyped(keys, dtype=None, track_meta=False))
    return mt.Compose(chain)


def val_transforms_2d(
    in_channels: int = 1,
    intensity: Mapping[str, Any] | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    pixdim: Sequence[float] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> mt.Compose:
    """Validation/evaluation chain, whole images of any size: ``image (C, H, W)``, ``label (1, H, W)``."""
    keys = ["image", "label"]
    return mt.Compose(
        [*_head(keys, in_channels, intensity, pixdim, label_colors, channel_dim, color_tolerance), mt.EnsureTyped(keys)]
    )


def infer_transforms_2d(
    in_channels: int = 1,
    intensity: Mapping[str, Any] | None = None,
    pixdim: Sequence[float] | None = None,
    channel_dim: str | int = "auto",
) -> mt.Compose:
    """Inference chain (image only, invertible): ``image (C, H, W)``; masks go back to each input's size."""
    return mt.Compose(
        [*_head(["image"], in_channels, intensity, pixdim, None, channel_dim, 0), mt.EnsureTyped("image")]
    )

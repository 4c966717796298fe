"""Train / validation / inference transform chains for 2D and 3D (``spatial_dims``), with class-balanced sampling.

One set of chains serves both bundles; ``spatial_dims`` picks the load head:

- 3D: ``LoadImaged`` (MONAI's readers) -> channel first -> RAS orientation -> [spacing] -> intensity.
- 2D: ``LoadImaged`` with :class:`~pipeline.data.images2d.Image2DReader` (PNG/JPEG/TIFF/``.npy``/NIfTI in row/column
  order; ``in_channels`` and ``channel_dim`` find the channel axis of ``.npy`` stacks) -> channel first ->
  :class:`~pipeline.transforms.labels2d.MaskToClassesd` (index masks checked, RGB(A)-coded masks mapped with
  ``label_colors``) -> [spacing] -> intensity. No orientation; images of different sizes are fine.

The deterministic head of each chain (load -> ... -> intensity -> foreground crop -> pad -> sampling indices) is what
``CacheDataset`` caches: MONAI caches up to the first random transform. Sampling indices are pre-computed once per
case so drawing a patch does not rescan the label; the samplers and their validation live in
:mod:`pipeline.transforms.sampling` (see ``docs/class-imbalance.md``). Augmentation never changes a patch's shape
(90° rotations only in a plane whose two patch sides are equal), so patches of a batch always collate.

Defaults that differ by ``spatial_dims`` (kept so the bundles' random streams stay the same): 3D resamples to
``pixdim`` (1.5, 1.5, 2.0) mm, crops to the foreground and rotates with probability 0.25; 2D keeps the native grid,
does not crop and rotates with probability 0.5.

Keys follow ``monai.utils.CommonKeys``: ``image``, ``label``, ``pred``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from monai import transforms as mt

from pipeline.data.dicom_seg import DicomSegReader, is_dicom_seg
from pipeline.data.images2d import Image2DReader
from pipeline.transforms.intensity import intensity_transform
from pipeline.transforms.labels2d import MaskToClassesd, label_channels
from pipeline.transforms.sampling import sampling_transforms

__all__ = [
    "DEFAULT_PIXDIM",
    "CaseCompose",
    "CaseTransformError",
    "LabelToImageGridd",
    "LoadLabeld",
    "above_minimum",
    "augment_transforms",
    "eval_postprocessing",
    "infer_transforms",
    "load_transforms",
    "square_plane",
    "train_transforms",
    "val_transforms",
]

logger = logging.getLogger(__name__)


class CaseTransformError(RuntimeError):
    """A transform of a chain failed on one case; the message starts with the case's file."""


def _case_of(data: Any) -> str | None:
    """The file a chain's input or intermediate item came from (``image`` first, then ``label``), if known."""
    if isinstance(data, (list, tuple)):  # patch samples of one case
        return _case_of(data[0]) if data else None
    if not isinstance(data, Mapping):
        return None
    for key in ("image", "label"):
        value = data.get(key)
        if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
            return str(value)
        meta = getattr(value, "meta", None)
        if isinstance(meta, Mapping) and meta.get("filename_or_obj"):
            return str(meta["filename_or_obj"])
    return None


class CaseCompose(mt.Compose):
    """``Compose`` whose failures name the case: any exception inside becomes a :class:`CaseTransformError`
    ``"<file>: <what went wrong>"`` (MONAI's ``applying transform ...`` wrapper removed), whether it happens while
    ``CacheDataset`` caches the deterministic head (in its worker threads) or while drawing random patches."""

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy: Any = None):
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except CaseTransformError:
            raise
        except Exception as e:
            cause: BaseException = e
            while cause.__cause__ is not None and str(cause).startswith("applying transform"):
                cause = cause.__cause__
            case = _case_of(input_) or "<case without a file name>"
            text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            raise CaseTransformError(f"{case}: {type(cause).__name__}: {text}") from e


#: default target spacing (mm) of the 3D chains; the 2D chains keep the native grid unless ``pixdim`` is given
DEFAULT_PIXDIM: tuple[float, ...] = (1.5, 1.5, 2.0)
_INDEX_KEYS = ["label_cls_indices", "label_fg_indices", "label_bg_indices"]


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")


def _check_sizes(name: str, value: Sequence[Any] | float, spatial_dims: int) -> list[Any]:
    _check_dims(spatial_dims)
    if isinstance(value, (int, float)):
        return [value] * spatial_dims
    value = list(value)
    if len(value) != spatial_dims:
        raise ValueError(f"{name!r} must have {spatial_dims} entries (spatial_dims), got {value!r}.")
    return value


def _pixdim(pixdim: Sequence[float] | None, spatial_dims: int) -> Sequence[float] | None:
    """The default ``pixdim`` means the native grid in 2D."""
    return None if spatial_dims == 2 and pixdim is DEFAULT_PIXDIM else pixdim


def load_transforms(
    keys: Sequence[str] = ("image", "label"),
    spatial_dims: int = 3,
    in_channels: int = 1,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[mt.Transform]:
    """The load head: files -> ``image (C, *spatial)`` [and ``label (1, *spatial)``], before resampling.

    3D: ``LoadImaged`` (a label may be a DICOM SEG: :class:`~pipeline.data.dicom_seg.DicomSegReader` maps its segments
    to class indices by ``class_names``) -> ``EnsureChannelFirstd`` -> :class:`LabelToImageGridd` ->
    ``Orientationd("RAS")``. 2D: ``LoadImaged`` with
    :class:`Image2DReader` (image and label with their own channel counts) -> ``EnsureChannelFirstd`` ->
    :class:`MaskToClassesd` (labels only).

    Args:
        keys: ``("image", "label")`` or ``("image",)``.
        spatial_dims: 2 or 3.
        in_channels: 2D: image channels (finds the channel axis of ``.npy`` stacks).
        label_colors: 2D: None for index masks, else class -> colour (:func:`parse_label_colors`).
        channel_dim: 2D: ``.npy`` channel axis (``"auto"``, 0, -1).
        color_tolerance: 2D: see :class:`MaskToClassesd`.
        num_classes: 2D: checks the ``label_colors`` class indices.
        class_names: 3D: the classes (background first) a DICOM SEG label's segment labels are matched to.
    """
    _check_dims(spatial_dims)
    keys = list(keys)
    if spatial_dims == 3:
        if label_colors:
            raise ValueError(
                f"'label_colors' maps RGB(A)-coded 2D masks, but spatial_dims=3, got label_colors={label_colors!r}. "
                "Fix: set label_colors to null for 3D label maps, or use spatial_dims=2 for 2D images."
            )
        chain3d: list[mt.Transform] = [mt.LoadImaged("image", image_only=True)]
        if "label" in keys:
            chain3d.append(LoadLabeld(class_names))
        chain3d.append(mt.EnsureChannelFirstd(keys))
        if "label" in keys:
            chain3d.append(LabelToImageGridd())
        return [*chain3d, mt.Orientationd(keys, axcodes="RAS")]
    reader = Image2DReader(in_channels, channel_dim)
    chain: list[mt.Transform] = [mt.LoadImaged("image", reader=reader, image_only=True)]  # type: ignore[arg-type]
    if "label" in keys:
        label_reader = Image2DReader(label_channels(label_colors), channel_dim, palette_as_index=not label_colors)
        chain.append(mt.LoadImaged("label", reader=label_reader, image_only=True))  # type: ignore[arg-type]
    chain.append(mt.EnsureChannelFirstd(keys))
    if "label" in keys:
        chain.append(MaskToClassesd("label", label_colors, color_tolerance, num_classes))
    return chain


def above_minimum(x: Any) -> Any:
    """Foreground for the crop: every voxel above the image's minimum (air/background after any intensity mode:
    0 after window or percentile scaling, the most negative value after a z-score), not MONAI's default ``x > 0``,
    which after a z-score would drop everything darker than the mean."""
    return x > x.min()


def _foreground_crop(keys: list[str]) -> mt.Transform:
    return mt.CropForegroundd(keys, source_key="image", select_fn=above_minimum, margin=4, allow_smaller=True)


class LoadLabeld(mt.MapTransform):
    """Load ``label`` like ``LoadImaged`` (MONAI's readers, chosen by suffix), or, when it is a DICOM SEG, with
    :class:`~pipeline.data.dicom_seg.DicomSegReader` (segments mapped to class indices by ``class_names``)."""

    def __init__(self, class_names: Sequence[str] | None = None, key: str = "label") -> None:
        super().__init__([key])
        self.key, self.loader, self.seg_reader = key, mt.LoadImage(image_only=True), DicomSegReader(class_names)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        path = d[self.key]
        seg = isinstance(path, (str, os.PathLike)) and is_dicom_seg(path)
        d[self.key] = self.loader(path, reader=self.seg_reader) if seg else self.loader(path)
        return d


class LabelToImageGridd(mt.MapTransform):
    """Resample a label that is not in its image's grid (a DICOM SEG covers only the slices it was drawn on) onto that
    grid, nearest neighbour; a label already in the image's grid (shape and affine within ``atol`` mm) is untouched."""

    def __init__(self, label_key: str = "label", image_key: str = "image", atol: float = 1e-3) -> None:
        super().__init__([label_key])
        self.label_key, self.image_key, self.atol = label_key, image_key, atol

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        label, image = d[self.label_key], d[self.image_key]
        same_shape = tuple(label.shape[1:]) == tuple(image.shape[1:])
        if same_shape and np.allclose(np.asarray(label.affine), np.asarray(image.affine), atol=self.atol):
            return d
        d[self.label_key] = mt.ResampleToMatch(mode="nearest", padding_mode="zeros")(label, img_dst=image)
        return d


def _head(
    keys: list[str],
    spatial_dims: int,
    pixdim: Sequence[float] | None,
    intensity: Mapping[str, Any] | None,
    in_channels: int,
    label_colors: Mapping[Any, Sequence[int]] | None,
    channel_dim: str | int,
    color_tolerance: float = 0,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> list[mt.Transform]:
    """Load head + spacing + intensity."""
    chain = load_transforms(
        keys, spatial_dims, in_channels, label_colors, channel_dim, color_tolerance, num_classes, class_names
    )
    if pixdim is not None:
        pix = _check_sizes("pixdim", pixdim, spatial_dims)
        chain.append(mt.Spacingd(keys, pixdim=pix, mode=("bilinear", "nearest") if "label" in keys else "bilinear"))
    chain.append(intensity_transform("image", **dict(intensity or {"mode": "percentile"})))
    return chain


def train_transforms(
    spatial_dims: int = 3,
    patch_size: Sequence[int] = (64, 64, 32),
    num_classes: int = 4,
    pixdim: Sequence[float] | None = DEFAULT_PIXDIM,
    intensity: Mapping[str, Any] | None = None,
    sampling: str = "classes",
    ratios: Sequence[float] | None = None,
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 4,
    augment: bool = True,
    crop_foreground: bool | None = None,
    class_names: Sequence[str] | None = None,
    in_channels: int = 1,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    rotate_prob: float | None = None,
) -> mt.Compose:
    """Training chain: deterministic head (cached) + class-balanced patch sampling + augmentation.

    Args:
        spatial_dims: 2 or 3.
        patch_size: patch size in voxels after resampling, ``spatial_dims`` entries; smaller images are zero-padded.
        num_classes: number of label classes including background (= network ``out_channels``).
        pixdim: target spacing in mm, or None to keep the native grid; the default is (1.5, 1.5, 2.0) in 3D and
            the native grid in 2D (2D files without an affine have pixel size 1).
        intensity: kwargs of :func:`intensity_transform`, e.g. ``{"mode": "window", "a_min": -175, "a_max": 250}``.
        sampling: ``classes`` (per-class ``ratios``), ``posneg`` (``pos``/``neg``) or ``uniform`` (centres
            anywhere); see :func:`pipeline.transforms.sampling.sampling_transforms`. Cases missing a class (or all
            foreground) never crash: they give patches of the classes they have, background at least, with a warning
            naming the file.
        ratios: per-class patch-centre ratios (``num_classes`` entries, background first, >= 0, not all 0);
            None = equal for every class. A class absent from a case gets no patches from that case.
        pos: foreground weight for ``posneg``.
        neg: background weight for ``posneg``.
        num_samples: patches per case per epoch.
        augment: a flip per axis, 90° rotations in a square plane of the patch, intensity scale/shift and noise.
        crop_foreground: crop to the image's foreground (non-zero after scaling) first; None: 3D yes, 2D no.
        class_names: class names (background first), used in sampling warnings.
        in_channels, label_colors, channel_dim, color_tolerance: 2D only, see :func:`load_transforms`.
        rotate_prob: probability of a 90° rotation; None: 0.25 in 3D, 0.5 in 2D.

    Returns:
        ``Compose`` mapping ``{"image": path, "label": path}`` to ``num_samples`` dicts of
        ``image (C, *patch_size)`` and ``label (1, *patch_size)``.

    Raises:
        ValueError: a setting is invalid; the message names it (sampling settings:
            :func:`pipeline.transforms.sampling.check_sampling`).
    """
    patch = _check_sizes("patch_size", patch_size, spatial_dims)
    sampler = sampling_transforms(patch, num_classes, sampling, ratios, pos, neg, num_samples, class_names)
    keys = ["image", "label"]
    pix = _pixdim(pixdim, spatial_dims)
    chain = _head(
        keys, spatial_dims, pix, intensity, in_channels, label_colors, channel_dim, color_tolerance, num_classes,
        class_names,
    )  # fmt: skip
    if crop_foreground if crop_foreground is not None else spatial_dims == 3:
        chain.append(
            mt.CropForegroundd(keys, source_key="image", select_fn=above_minimum, margin=4, allow_smaller=True)
        )
    chain.append(mt.SpatialPadd(keys, spatial_size=patch))
    chain += sampler
    if augment:
        prob = rotate_prob if rotate_prob is not None else (0.25 if spatial_dims == 3 else 0.5)
        chain += augment_transforms(keys, patch, rotate_prob=prob)
    chain.append(mt.DeleteItemsd(keys=_INDEX_KEYS))
    chain.append(mt.EnsureTyped(keys, dtype=None, track_meta=False))
    return CaseCompose(chain)


def square_plane(patch_size: Sequence[int]) -> tuple[int, int] | None:
    """The first plane among (0, 1), (0, 2), (1, 2) whose two patch sides are equal, or None (no square plane).

    A 90° rotation in that plane keeps the patch shape, so patches of a batch still collate.
    """
    size = list(patch_size)
    planes = [(a, b) for a in range(len(size)) for b in range(a + 1, len(size))]
    return next((p for p in planes if size[p[0]] == size[p[1]]), None)


def augment_transforms(keys: Sequence[str], patch_size: Sequence[int], rotate_prob: float = 0.25) -> list[mt.Transform]:
    """Training augmentation after patch sampling, never changing the patch shape.

    A flip per axis, 90° rotations in :func:`square_plane` of ``patch_size`` (none when no plane is square),
    intensity scale/shift and a little Gaussian noise (``image`` only).
    """
    keys = list(keys)
    plane = square_plane(patch_size)
    chain: list[mt.Transform] = [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(len(patch_size))]
    if plane is None:
        logger.info("patch_size %s has no square plane: no 90° rotation (it would change the shape).", patch_size)
    else:
        chain.append(mt.RandRotate90d(keys, prob=rotate_prob, max_k=3, spatial_axes=plane))
    return [
        *chain,
        mt.RandScaleIntensityd("image", factors=0.1, prob=0.5),
        mt.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        mt.RandGaussianNoised("image", prob=0.15, std=0.02),
    ]


def val_transforms(
    spatial_dims: int = 3,
    pixdim: Sequence[float] | None = DEFAULT_PIXDIM,
    intensity: Mapping[str, Any] | None = None,
    crop_foreground: bool | None = None,
    in_channels: int = 1,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    class_names: Sequence[str] | None = None,
) -> mt.Compose:
    """Validation/evaluation chain (deterministic, whole images of any size): ``image (C, ...)``, ``label (1, ...)``.

    Arguments as :func:`train_transforms`; ``class_names`` map DICOM SEG labels' segments to class indices.
    """
    keys = ["image", "label"]
    pix = _pixdim(pixdim, spatial_dims)
    chain = _head(
        keys, spatial_dims, pix, intensity, in_channels, label_colors, channel_dim, color_tolerance, None, class_names
    )
    if crop_foreground if crop_foreground is not None else spatial_dims == 3:
        chain.append(
            mt.CropForegroundd(keys, source_key="image", select_fn=above_minimum, margin=4, allow_smaller=True)
        )
    chain.append(mt.EnsureTyped(keys))
    return CaseCompose(chain)


def infer_transforms(
    spatial_dims: int = 3,
    pixdim: Sequence[float] | None = DEFAULT_PIXDIM,
    intensity: Mapping[str, Any] | None = None,
    in_channels: int = 1,
    channel_dim: str | int = "auto",
) -> mt.Compose:
    """Inference chain (image only, invertible so masks go back to the input's grid and size).

    Arguments as :func:`train_transforms`.
    """
    chain = _head(["image"], spatial_dims, _pixdim(pixdim, spatial_dims), intensity, in_channels, None, channel_dim)
    chain.append(mt.EnsureTyped("image"))
    return CaseCompose(chain)


def eval_postprocessing(num_classes: int, label: bool = True) -> mt.Compose:
    """Logits → one-hot ``pred`` (and one-hot ``label``) for MONAI's metrics."""
    chain: list[mt.Transform] = [mt.AsDiscreted("pred", argmax=True, to_onehot=num_classes)]
    if label:
        chain.append(mt.AsDiscreted("label", to_onehot=num_classes))
    return mt.Compose(chain)

"""Reading 2D image files into arrays with MONAI metadata, and writing 2D masks.

PNG/JPEG/BMP through Pillow, TIFF through ``tifffile`` (pages, planar and interleaved samples; without it Pillow reads
single-page grey/RGB(A) TIFFs), ``.npy`` and 2D NIfTI through nibabel. Arrays keep numpy's ``(H, W)`` order (row,
column), unlike MONAI's ``PILReader`` which transposes, so a mask written with :func:`encode_mask_2d` lines up with its
input. ``.npy`` stacks may be ``(C, H, W)`` or ``(H, W, C)``: ``channel_dim``, or found from the expected channels.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai.data import ImageReader

__all__ = [
    "IMAGE_SUFFIXES_2D",
    "MASK_SUFFIXES_2D",
    "NIFTI_SUFFIXES",
    "PIL_SUFFIXES",
    "TIFF_SUFFIXES",
    "Image2DReader",
    "encode_mask_2d",
    "read_image_2d",
]

logger = logging.getLogger(__name__)

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES_2D: tuple[str, ...] = (*PIL_SUFFIXES, *TIFF_SUFFIXES, ".npy", *NIFTI_SUFFIXES)
_AUTO_MAX_CHANNELS = 16  # without a channel count, an end axis this short (and the other longer) is the channel axis


def _channel_axis(shape: tuple[int, ...], channels: int | None, channel_dim: str | int, path: str) -> int | None:
    """Channel axis (0 or -1) of a 3D ``.npy`` array, or None for 2D."""
    if len(shape) == 2:
        return None
    if len(shape) != 3:
        raise ValueError(f"{path}: array of shape {shape}; expected (H, W), (C, H, W) or (H, W, C).")
    if channel_dim in (0, -1, 2):
        return 0 if channel_dim == 0 else -1
    if channel_dim != "auto":
        raise ValueError(f"'channel_dim' must be 'auto', 0 or -1, got {channel_dim!r}.")
    first, last = shape[0] == channels, shape[-1] == channels
    if first != last:
        return 0 if first else -1
    if first or (shape[0] <= _AUTO_MAX_CHANNELS < shape[-1]):
        return 0
    if shape[-1] <= _AUTO_MAX_CHANNELS < shape[0]:
        return -1
    raise ValueError(
        f"{path}: cannot tell the channel axis of an array of shape {shape} (expected {channels or 'C'} channels "
        "first or last). Fix: set channel_dim to 0 for (C, H, W) or -1 for (H, W, C)."
    )


def _read_pil(path: str, palette_as_index: bool) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        im: Image.Image = opened
        if im.mode == "P" and not palette_as_index:
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV", "PA"):
            im = im.convert("RGBA" if im.mode == "PA" else "L" if im.mode == "1" else "RGB")
        return np.asarray(im)


def _read_tiff(path: str) -> tuple[np.ndarray, int | None]:
    try:
        import tifffile
    except ImportError:  # Pillow reads single-page grey/RGB(A) TIFFs
        try:
            arr = _read_pil(path, palette_as_index=False)
        except Exception as e:
            raise ImportError(f"{path}: reading this TIFF needs tifffile (pip install tifffile): {e}") from e
        return arr, (-1 if arr.ndim == 3 else None)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arr, axes = series.asarray(), series.axes
    if arr.ndim == 2:
        return arr, None
    if arr.ndim == 3 and axes.endswith("YXS"):
        return arr, -1
    if arr.ndim == 3 and axes.endswith("YX"):
        return arr, 0
    raise ValueError(
        f"{path}: TIFF with axes {axes!r} and shape {arr.shape}; expected one 2D image (YX) with channels."
    )


def _read_nifti(path: str) -> tuple[np.ndarray, int | None, np.ndarray]:
    import nibabel as nib

    img: Any = nib.load(path)
    arr = np.asanyarray(img.dataobj)
    if arr.ndim >= 3 and arr.shape[2] == 1:  # (X, Y, 1[, C...]) is 2D
        arr = arr.reshape(arr.shape[:2] + (-1,)) if arr.ndim > 3 else arr[:, :, 0]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
    axis = -1 if arr.ndim == 3 and len(img.shape) > 2 and img.shape[2] == 1 else None
    return arr, axis, np.asarray(img.affine, dtype=np.float64)


def read_image_2d(
    path: str | os.PathLike,
    channels: int | None = None,
    channel_dim: str | int = "auto",
    palette_as_index: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one 2D image file.

    Args:
        path: PNG/JPEG/BMP, TIFF, ``.npy`` or NIfTI file.
        channels: expected channel count, used to find the channel axis of ``.npy`` stacks.
        channel_dim: ``"auto"``, ``0`` (``(C, H, W)``) or ``-1`` (``(H, W, C)``), for ``.npy`` stacks.
        palette_as_index: keep a palette PNG's indices (index masks) instead of converting it to RGB.

    Returns:
        ``(array, meta)``: ``(H, W)`` or ``(H, W, C)``/``(C, H, W)`` as stored, and MONAI metadata
        (``spatial_shape``, ``original_channel_dim``, ``affine``).
    """
    path = str(path)
    name = path.lower()
    affine = np.eye(4)
    if name.endswith(PIL_SUFFIXES):
        arr = _read_pil(path, palette_as_index)
        axis = -1 if arr.ndim == 3 else None
    elif name.endswith(TIFF_SUFFIXES):
        arr, axis = _read_tiff(path)
    elif name.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
        axis = _channel_axis(arr.shape, channels, channel_dim, path)
    elif name.endswith(NIFTI_SUFFIXES):
        arr, axis, affine = _read_nifti(path)
    else:
        raise ValueError(f"{path}: not a 2D image file; expected one of {list(IMAGE_SUFFIXES_2D)}.")
    if arr.dtype == bool or arr.dtype.kind not in "uif":
        arr = arr.astype(np.float32)
    spatial = [s for i, s in enumerate(arr.shape) if axis is None or i != axis % arr.ndim]
    meta = {
        "spatial_shape": np.asarray(spatial),
        "original_channel_dim": float("nan") if axis is None else axis,
        "affine": affine,
        "original_affine": affine.copy(),
    }
    return arr, meta


class Image2DReader(ImageReader):
    """MONAI reader for 2D files (see the module docstring); use as ``LoadImaged(keys, reader=Image2DReader())``.

    Args:
        channels: expected channels (``in_channels`` for images, 1 for index masks, 3/4 for RGB(A)-coded masks).
        channel_dim: ``"auto"``, ``0`` or ``-1``, for ``.npy`` stacks.
        palette_as_index: keep palette PNG indices (index masks); otherwise palettes become RGB.
    """

    def __init__(self, channels: int | None = None, channel_dim: str | int = "auto", palette_as_index: bool = False):
        super().__init__()
        self.channels, self.channel_dim, self.palette_as_index = channels, channel_dim, palette_as_index

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(str(n).lower().endswith(IMAGE_SUFFIXES_2D) for n in names)

    def read(
        self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any
    ) -> list[tuple[np.ndarray, dict]]:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        return [read_image_2d(n, self.channels, self.channel_dim, self.palette_as_index) for n in names]

    def get_data(self, img: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
        if len(img) == 1:
            return img[0]
        if any(not math.isnan(m["original_channel_dim"]) for _, m in img):
            raise ValueError("several files are stacked as channels only when each has one channel.")
        meta = dict(img[0][1], original_channel_dim=0)
        return np.stack([a for a, _ in img]), meta


MASK_SUFFIXES_2D: dict[str, str] = {
    ".png": ".png",
    ".jpg": ".png",
    ".jpeg": ".png",
    ".bmp": ".png",
    ".npy": ".png",
    ".tif": ".tif",
    ".tiff": ".tif",
}


def encode_mask_2d(labels: np.ndarray, suffix: str) -> bytes:
    """A ``(H, W)`` class-index mask as PNG or TIFF bytes (uint8 grey, losslessly compressed).

    Args:
        labels: class indices ``(H, W)``, 0..255.
        suffix: ``.png``, ``.tif`` or ``.tiff``.
    """
    from PIL import Image

    if labels.ndim != 2:
        raise ValueError(f"a 2D mask must be (H, W), got shape {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"mask values must be 0..255 for an 8-bit {suffix} mask, got {labels.min()}..{labels.max()}.")
    fmt = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix.lower())
    if fmt is None:
        raise ValueError(f"mask suffix {suffix!r}; expected .png, .tif or .tiff.")
    buf = io.BytesIO()
    options = {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {"compress_level": 1}
    Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(buf, format=fmt, **options)
    return buf.getvalue()

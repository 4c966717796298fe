"""Reading image geometry for the checks: NIfTI headers (no voxel data), other formats via MONAI, DICOM series, and 2D
files through the 2D chains' reader (:func:`read_info_2d`)."""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datalist import Problem
from pipeline.transforms.labels2d import MaskToClassesd, label_channels

__all__ = [
    "CaseReader",
    "ImageInfo",
    "SpacingError",
    "check_dicom_folder",
    "dicom_info",
    "load_array",
    "read_image_info",
    "read_info_2d",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class ImageInfo:
    """Geometry of an image file or DICOM series (from headers where possible)."""

    path: str
    spatial_shape: tuple[int, ...]
    channels: int
    affine: np.ndarray | None
    spacing: tuple[float, ...]


_GZIP_MAGIC = b"\x1f\x8b"
NIFTI_HEADER_BYTES = 348  # NIfTI-1; a file (decompressed) shorter than this cannot be read at all


def _gzip_header_end(data: bytes) -> int | None:
    """Length of the gzip member header at the start of ``data`` (RFC 1952), or None when ``data`` ends inside it."""
    if len(data) < 10:
        return None
    flags, pos = data[3], 10
    if flags & 4:  # FEXTRA: 2-byte length, then the field
        if len(data) < pos + 2:
            return None
        pos += 2 + int.from_bytes(data[pos : pos + 2], "little")
    for bit in (8, 16):  # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = data.find(b"\0", pos)
            if end < 0:
                return None
            pos = end + 1
    pos += 2 if flags & 2 else 0  # FHCRC
    return pos if len(data) >= pos else None


def _gzip_size_ok(
    path: str, expected: int, what: str = "bytes the NIfTI header calls for (header + voxels)"
) -> str | None:
    """None if the gzip stream holds ``expected`` bytes, else the reason (with the bytes read and expected).

    The gzip trailer stores the uncompressed size (mod 2**32): when it matches, nothing is decompressed. Otherwise
    (truncated file, or a multi-member gzip) the stream is decompressed to be sure, counting every byte.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size >= 4:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") == expected % 2**32:
                return None
        f.seek(0)
        head = f.read(512)
        if size == 0:
            return f"the file is empty (0 bytes, expected {expected} {what})"
        if head[:2] != _GZIP_MAGIC[: len(head[:2])]:
            return None  # not gzip at all: the reader's own error says so
        if _gzip_header_end(head) is None:
            return (
                f"the file ends inside its gzip header ({size} bytes on disk, no image data at all; expected "
                f"{expected} {what})"
            )
        f.seek(0)
        total, member, open_member = 0, zlib.decompressobj(16 + zlib.MAX_WBITS), False
        try:
            while chunk := f.read(1 << 20):
                data = chunk
                while data:
                    total += len(member.decompress(data))
                    data, open_member = b"", not member.eof
                    if member.eof:  # a multi-member gzip: the next member starts in unused_data
                        data = member.unused_data.lstrip(b"\0")
                        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as e:
            if total >= expected:
                return None  # every byte is there; trailing junk after the stream is not the reader's concern
            return (
                f"the gzip stream is corrupt after {total} of the {expected} {what} ({size} bytes on disk; zlib: {e})"
            )
    if total >= expected:
        return None
    if not open_member:
        return f"it decompresses completely to {total} bytes, but expected {expected} {what}"
    pct = 100 * total / expected if expected else 0.0
    return (
        f"the gzip stream breaks off after {total} of the {expected} {what} ({pct:.0f}%; {size} bytes on disk, no "
        "gzip end marker)"
    )


def _cut_in_header(path: str) -> str | None:
    """Why a NIfTI file that nibabel cannot open is too short to hold even its header, or None."""
    try:
        if path.lower().endswith(".gz"):
            return _gzip_size_ok(path, NIFTI_HEADER_BYTES, "bytes of the NIfTI header")
        size = os.path.getsize(path)
    except OSError:
        return None
    return f"{size} bytes, the NIfTI header alone has {NIFTI_HEADER_BYTES}" if size < NIFTI_HEADER_BYTES else None


class SpacingError(ValueError):
    """A NIfTI header whose voxel size cannot be trusted; the message names the file's values and the fix."""


def _check_spacing(path: str, img: Any, ndim: int) -> None:
    """Zero, negative or non-finite ``pixdim`` on a spatial axis with neither qform nor sform: nibabel silently
    turns it into 1 mm (its header check "fixes" it on load), so it is read again from the raw header here."""
    header = img.header
    try:
        if int(header["qform_code"]) or int(header["sform_code"]):
            return  # the affine comes from the qform/sform; pixdim is not used for geometry
        from nibabel.openers import ImageOpener

        with ImageOpener(path) as f:
            raw = type(header).from_fileobj(f, check=False)
        pixdim = [float(v) for v in raw["pixdim"][1 : ndim + 1]]
    except (KeyError, OSError, ValueError, TypeError):  # Analyze headers have no qform/sform
        return
    bad = [i for i, v in enumerate(pixdim) if not (math.isfinite(v) and v > 0)]
    if bad:
        raise SpacingError(
            f"pixdim {pixdim} has zero, negative or non-finite voxel size(s) on axis {bad} and the header has no "
            "qform/sform (qform_code=0, sform_code=0), so the voxel size is unknown (nibabel silently makes it 1 mm); "
            "expected positive voxel sizes in mm. Fix: re-export the file with its real spacing and orientation, or "
            "set them (e.g. nibabel: img.header.set_zooms(...) and img.set_qform(affine, code=1))"
        )


def read_image_info(path: str | Path) -> ImageInfo:
    """Shape, channels and affine of an image file (NIfTI: header only) or DICOM series folder.

    NIfTI axes 0-2 are space (a missing or 1-voxel axis 2 means a 2D image), axes 3+ are channels.

    Raises:
        ValueError: the file cannot be read (:class:`SpacingError`: a NIfTI with zero or negative ``pixdim`` and no
            qform/sform).
        EOFError: the file is truncated (the message says how many bytes were read and expected).
    """
    path = str(path)
    if os.path.isdir(path):
        problems, info = dicom_info(path)
        if info is None:
            raise ValueError("; ".join(p.message for p in problems))
        return info
    if path.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        try:
            img: Any = nib.load(path)
            shape = tuple(int(s) for s in img.shape)
            offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))  # vox_offset 0 means 352
            expected = offset + int(np.prod(shape)) * img.header.get_data_dtype().itemsize
        except Exception as e:  # nibabel raises many types for corrupt files
            if (cut := _cut_in_header(path)) is not None:
                raise EOFError(f"truncated file: {cut}") from e
            raise ValueError(f"not a readable NIfTI file ({type(e).__name__}: {e})") from e
        if path.lower().endswith(".gz"):
            reason = _gzip_size_ok(path, expected)
        elif (size := os.path.getsize(path)) < expected:
            reason = f"{size} bytes on disk, but the NIfTI header calls for {expected} (header + voxels)"
        else:
            reason = None
        if reason:
            raise EOFError(f"truncated file: {reason}")
        spatial = shape[:3]
        while len(spatial) > 2 and spatial[-1] == 1:
            spatial = spatial[:-1]
        _check_spacing(path, img, len(spatial))
        zooms = tuple(float(z) for z in img.header.get_zooms()[: len(spatial)])
        return ImageInfo(path, spatial, int(np.prod(shape[3:])), np.asarray(img.affine, dtype=float), zooms)
    from monai.data.utils import affine_to_spacing
    from monai.transforms import LoadImage

    try:
        arr = LoadImage(image_only=True)(path)
    except Exception as e:  # reader plugins raise many types
        raise ValueError(f"not a readable image ({type(e).__name__}: {str(e)[:200]})") from e
    spatial = tuple(int(s) for s in arr.meta.get("spatial_shape", arr.shape))
    affine = np.asarray(arr.affine, dtype=float)
    channels = int(np.prod(arr.shape)) // max(1, int(np.prod(spatial)))
    return ImageInfo(path, spatial, channels, affine, tuple(float(s) for s in affine_to_spacing(affine, len(spatial))))


def dicom_info(folder: str) -> tuple[list[Problem], ImageInfo | None]:
    """Problems of a folder meant to hold one DICOM series, and its geometry when it is one regular volume."""
    from pipeline.data.dicom_series import DicomError, find_dicom_series, is_dicom_candidate, series_geometry

    files = sorted(str(p) for p in Path(folder).rglob("*") if p.is_file() and is_dicom_candidate(p))
    series, unreadable, _ = find_dicom_series(files)
    problems = [Problem("unreadable", f, reason) for f, reason in unreadable]
    if not series:
        return problems + [
            Problem("unreadable", folder, "holds no DICOM image series (and is not an image file).")
        ], None
    if len(series) > 1:
        parts = ", ".join(f"{s.uid} ({len(s.slices)} files, {s.modality} {s.description!r})" for s in series[:5])
        msg = (
            f"holds {len(series)} DICOM series mixed together: {parts}. Expected one series (one SeriesInstanceUID) "
            "per image entry. Fix: move each series into its own folder and list them separately."
        )
        return problems + [Problem("dicom_mixed_series", folder, msg)], None
    try:
        slices, affine = series_geometry(series[0])
    except DicomError as e:
        return problems + [Problem("dicom_geometry", folder, f"{e} Fix: re-export the complete series.")], None
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    return problems, ImageInfo(folder, (slices[0].columns, slices[0].rows, len(slices)), 1, affine, spacing)


def check_dicom_folder(folder: str | Path) -> list[Problem]:
    """Problems of a folder that should hold exactly one DICOM series: unreadable files, mixed series, gaps."""
    return dicom_info(str(folder))[0]


def load_array(path: str) -> np.ndarray:
    """Voxel data of an image file (NIfTI through nibabel, scaled; others through MONAI's ``LoadImage``)."""
    if path.lower().endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        return np.asanyarray(nib.load(path).dataobj)  # type: ignore[attr-defined]
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(path))


def read_info_2d(
    path: str, channels: int | None = None, channel_dim: str | int = "auto", palette_as_index: bool = False
) -> tuple[ImageInfo, np.ndarray]:
    """Geometry and channel-first pixels ``(C, *spatial)`` of a 2D file, read as the 2D chains read it.

    Args: as :func:`pipeline.data.images2d.read_image_2d`.

    Raises:
        ValueError: the file cannot be read as a 2D image (unknown suffix, ambiguous ``.npy`` channel axis, ...).
    """
    from pipeline.data.images2d import read_image_2d

    try:
        arr, meta = read_image_2d(path, channels, channel_dim, palette_as_index)
    except Exception as e:  # readers raise many types for corrupt files
        reason = str(e).removeprefix(f"{path}: ")[:300]
        raise ValueError(f"not a readable 2D image ({type(e).__name__}: {reason})") from e
    axis = meta["original_channel_dim"]
    arr = arr[None] if math.isnan(axis) else np.moveaxis(arr, int(axis), 0)
    affine = np.asarray(meta["affine"], dtype=float)
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(min(arr.ndim - 1, 3)))
    return ImageInfo(path, tuple(int(n) for n in arr.shape[1:]), int(arr.shape[0]), affine, spacing), arr


class CaseReader:
    """Reads a case's files for the checks as the transform chains of ``spatial_dims`` read them.

    3D: NIfTI headers (no voxel data) or DICOM series (:func:`read_image_info`); 2D: pixels through the 2D chains'
    reader (:func:`read_info_2d`), labels mapped to class indices by :class:`MaskToClassesd` (index masks checked,
    RGB(A) masks mapped with ``label_colors``).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (2D: finds the channel axis of ``.npy`` stacks).
        label_colors, channel_dim, color_tolerance: 2D only, as in :func:`pipeline.transforms.chains.train_transforms`.
        num_classes: checks the ``label_colors`` class indices (2D).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        label_colors: Mapping[Any, Sequence[int]] | None = None,
        channel_dim: str | int = "auto",
        color_tolerance: float = 0,
        num_classes: int | None = None,
    ) -> None:
        self.spatial_dims, self.in_channels, self.channel_dim = spatial_dims, in_channels, channel_dim
        self.label_colors = label_colors
        self.mapper = MaskToClassesd("label", label_colors, color_tolerance, num_classes) if spatial_dims == 2 else None

    def read(self, path: str, role: str = "image") -> tuple[list[Problem], ImageInfo | None, np.ndarray | None]:
        """``(problems, geometry, channel-first pixels)`` of an ``image`` or ``label`` file; pixels only in 2D."""
        if self.spatial_dims == 2:
            channels = self.in_channels if role == "image" else label_channels(self.label_colors)
            try:
                info, arr = read_info_2d(path, channels, self.channel_dim, role == "label" and not self.label_colors)
            except ValueError as e:
                return (
                    [Problem("unreadable", path, f"{e}. Fix: re-export the file as PNG/TIFF/.npy/NIfTI.")],
                    None,
                    None,
                )
            return [], info, arr
        if os.path.isdir(path):
            found, dicom = dicom_info(path)
            return found, dicom, None
        try:
            return [], read_image_info(path), None
        except EOFError as e:
            return [Problem("truncated", path, f"{e}. Fix: copy or export the file again.")], None, None
        except SpacingError as e:
            return [Problem("bad_spacing", path, f"{e}.")], None, None
        except ValueError as e:
            fix = "re-export or replace the file"
            if isinstance(e.__cause__, PermissionError):
                fix = "make the file readable (chmod a+r), or run as a user who may read it"
            return [Problem("unreadable", path, f"{e}. Fix: {fix}.")], None, None

    def label_classes(self, label: np.ndarray, path: str) -> tuple[list[Problem], np.ndarray | None]:
        """2D: a label ``(C, H, W)`` as class indices ``(H, W)``, or the problem (colours, channels) naming ``path``."""
        if self.mapper is None:
            raise ValueError("label_classes maps 2D masks; this reader has spatial_dims=3.")
        try:
            classes = self.mapper.map(label, source=path)
        except ValueError as e:
            return [Problem("label_values", path, str(e).removeprefix(f"{path}: "))], None
        return [], np.asarray(classes)[0]

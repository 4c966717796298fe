"""DICOM series: find them in a folder tree, check they form one regular volume, read them with their affine.

A series is every image that shares a ``SeriesInstanceUID`` (never one file = one image), wherever it lies under
the input folder. Files ending in ``.dcm``/``.dicom``/``.ima`` are DICOM; extension-less files (and files named by a
UID, such as ``1.2.840.113619.2.55``) are DICOM when they carry the ``DICM`` preamble, otherwise they are left alone.

A series becomes a volume only if it is one: images (single-frame files, or the frames of enhanced multi-frame files,
placed by their per-frame functional groups) of the same size, orientation and pixel spacing, no localizer/projection
images, at least two slices at distinct positions on one line along the slice normal (a gantry-tilted stack, off the
normal by more than :data:`MAX_TILT_DEGREES`, is refused, not resampled), with a uniform step; files may come in any
order. Anything else raises :class:`DicomError` saying what is wrong (e.g. the gap where slices are missing).
MONAI's ``PydicomReader`` stacks any folder it is given (projections, mixed series, gaps) without a word, so it is
not used here.

Geometry: voxel ``[i, j, k]`` is column ``i``, row ``j`` of the ``k``-th slice in order along the normal
``n = row_cosine x column_cosine``; its LPS position is ``IPP_0 + i*dc*row_cosine + j*dr*col_cosine + k*step`` with
``(dr, dc) = PixelSpacing`` and ``step`` the mean slice-to-slice vector. The affine returned is in RAS (NIfTI/MONAI
convention): ``diag(-1, -1, 1, 1) @ affine_lps``.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DICOM_SUFFIXES",
    "MAX_TILT_DEGREES",
    "DicomError",
    "DicomSeries",
    "SliceInfo",
    "find_dicom_series",
    "is_dicom_candidate",
    "read_series",
    "series_geometry",
]

DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".ima")
#: slices stacked further than this off their normal are a gantry-tilted (sheared) series: refused
MAX_TILT_DEGREES = 0.5
_NOT_VOLUME_TYPES = {"LOCALIZER", "PROJECTION IMAGE", "SCOUT"}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_TAGS = [
    "SeriesInstanceUID",
    "SOPClassUID",
    "Modality",
    "ImageType",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "NumberOfFrames",
    "SamplesPerPixel",
    "SeriesDescription",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]


class DicomError(ValueError):
    """A DICOM file or series that cannot become a volume; the message names the file/series and the reason."""


@dataclass(frozen=True)
class SliceInfo:
    """Header facts of one DICOM image file (read without pixel data)."""

    path: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rows: int
    columns: int
    frames: int
    image_type: tuple[str, ...]
    frame: int | None = None  # index of the frame in a multi-frame (enhanced) file, None for a single-frame file
    rescale: tuple[float, float] | None = None  # (slope, intercept) of that frame from its functional groups


@dataclass(frozen=True)
class DicomSeries:
    """One series: its UID, the folder holding its files (their common parent) and one :class:`SliceInfo` per file."""

    uid: str
    folder: str
    modality: str
    description: str
    slices: tuple[SliceInfo, ...]

    @property
    def files(self) -> list[str]:
        """The series' files, each once (a multi-frame file holds several slices)."""
        return list(dict.fromkeys(s.path for s in self.slices))


def is_dicom_candidate(path: str | Path) -> bool:
    """True for ``*.dcm``/``*.dicom``/``*.ima`` and for names without a letter extension (``IM0001``, ``1.2.3.4``)."""
    name = Path(path).name.lower()
    if name.endswith(DICOM_SUFFIXES):
        return True
    suffix = Path(name).suffix
    return name != "dicomdir" and (not suffix or suffix[1:].isdigit())


def _has_preamble(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None


def _slice_info(path: str, ds: Any) -> SliceInfo:
    return SliceInfo(
        path=path,
        position=_floats(ds.get("ImagePositionPatient")),
        orientation=_floats(ds.get("ImageOrientationPatient")),
        pixel_spacing=_floats(ds.get("PixelSpacing")),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        frames=int(ds.get("NumberOfFrames") or 1),
        image_type=tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
    )


def _group(ds: Any, frame_groups: Any, name: str) -> Any:
    """Item 0 of functional group ``name`` of one frame, else of the shared groups, else None."""
    for groups in (frame_groups, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        seq = groups.get(name) if groups is not None else None
        if seq:
            return seq[0]
    return None


def _frame_infos(path: str, ds: Any) -> list[SliceInfo]:
    """One :class:`SliceInfo` per frame of an enhanced (functional-group) multi-frame image, from its per-frame and
    shared ``PlanePosition``/``PlaneOrientation``/``PixelMeasures``/``PixelValueTransformation`` groups; a
    multi-frame file without per-frame positions stays one entry (refused by :func:`series_geometry`)."""
    base = _slice_info(path, ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != base.frames:
        return [base]
    out = []
    for k, groups in enumerate(per_frame):
        position, orientation = (
            _group(ds, groups, "PlanePositionSequence"),
            _group(ds, groups, "PlaneOrientationSequence"),
        )
        measures, rescale = (
            _group(ds, groups, "PixelMeasuresSequence"),
            _group(ds, groups, "PixelValueTransformationSequence"),
        )
        out.append(
            SliceInfo(
                path=path,
                position=_floats(position.get("ImagePositionPatient")) if position else None,
                orientation=_floats(orientation.get("ImageOrientationPatient")) if orientation else None,
                pixel_spacing=_floats(measures.get("PixelSpacing")) if measures else None,
                rows=base.rows,
                columns=base.columns,
                frames=base.frames,
                image_type=base.image_type,
                frame=k,
                rescale=(float(rescale.get("RescaleSlope", 1)), float(rescale.get("RescaleIntercept", 0)))
                if rescale
                else None,
            )
        )
    return out


_NON_IMAGE_MODALITIES = ("SEG", "RTSTRUCT", "SR", "PR", "KO", "REG", "RTPLAN", "RTDOSE", "RTRECORD")


def _raw_object_modality(path: str) -> str | None:
    """The Modality of a non-image DICOM object stored without the 128-byte preamble (read with ``force``), else
    None: such files are not a failure to segment, and an image without preamble stays unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, specific_tags=["Modality", "Rows", "SOPClassUID"], force=True
        )
    except Exception:
        return None
    modality = str(ds.get("Modality", ""))
    return modality if modality in _NON_IMAGE_MODALITIES and not ds.get("Rows") else None


def find_dicom_series(
    files: Iterable[str | Path],
) -> tuple[list[DicomSeries], list[tuple[str, str]], list[tuple[str, str]]]:
    """Group DICOM files by ``SeriesInstanceUID`` (headers only; pixel data is not read).

    Args:
        files: candidate files (see :func:`is_dicom_candidate`); extension-less files without the ``DICM``
            preamble are skipped silently.

    Returns:
        ``(series, unreadable, ignored)``: series sorted by folder then UID; ``(file, reason)`` for files that
        claim to be DICOM but cannot be parsed; ``(file, reason)`` for DICOM objects that are not images
        (DICOMDIR, structured reports, RT structures, segmentations).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    groups: dict[str, list[SliceInfo]] = defaultdict(list)
    meta: dict[str, tuple[str, str]] = {}
    unreadable: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    for f in files:
        path = str(f)
        try:
            if not path.lower().endswith(DICOM_SUFFIXES) and not _has_preamble(path):
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
            modality, uid = str(ds.get("Modality", "")), str(ds.get("SeriesInstanceUID", ""))
            if not (ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")):
                raise ValueError("no SOP Class UID; truncated or corrupt?")
            if not ds.get("Rows") or modality in _NON_IMAGE_MODALITIES:
                ignored.append((path, f"DICOM object without an image to segment (Modality {modality or '?'})"))
                continue
            if not uid:
                unreadable.append((path, "DICOM image without SeriesInstanceUID (0020,000E); cannot group it"))
                continue
            infos = _frame_infos(path, ds) if int(ds.get("NumberOfFrames") or 1) > 1 else [_slice_info(path, ds)]
        except Exception as e:  # pydicom raises many types on damaged files; each is one file's problem
            what = "no 'DICM' preamble" if isinstance(e, InvalidDicomError) else _one_line(e)
            kind = _raw_object_modality(path) if isinstance(e, InvalidDicomError) else None
            if kind is not None:  # a non-image object written without preamble (e.g. an RTSTRUCT export)
                ignored.append((path, f"DICOM object without an image to segment (Modality {kind}; no preamble)"))
            else:
                unreadable.append((path, f"not a readable DICOM file ({what})"))
            continue
        groups[uid].extend(infos)
        meta.setdefault(uid, (modality, str(ds.get("SeriesDescription", ""))))
    series = []
    for uid, slices in groups.items():
        folder = os.path.commonpath([os.path.dirname(s.path) for s in slices])
        slices.sort(key=lambda s: (s.path, s.frame or 0))
        series.append(DicomSeries(uid, folder, meta[uid][0], meta[uid][1], tuple(slices)))
    series.sort(key=lambda s: (s.folder, s.uid))
    return series, unreadable, ignored


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if type(e) is ValueError else f"{type(e).__name__}: {text}"


def _counts(values: Sequence[Any]) -> str:
    return ", ".join(f"{v} ({n} files)" for v, n in Counter(values).most_common(4))


def series_geometry(series: DicomSeries, tol: float = 0.1) -> tuple[list[SliceInfo], np.ndarray]:
    """Check that a series is one regular volume and compute its affine (from headers only).

    Args:
        series: from :func:`find_dicom_series`.
        tol: allowed relative deviation of each slice step from the median step.

    Returns:
        ``(slices in order along the normal, affine (4, 4) in RAS)`` for a volume of shape
        ``(Columns, Rows, n_slices)``.

    Raises:
        DicomError: multi-frame or localizer/projection images, fewer than two slices, mixed sizes, orientations
            or pixel spacings, missing geometry tags, repeated positions, positions off one line, missing slices
            (a gap of about a whole multiple of the step) or non-uniform spacing.
    """
    sl = list(series.slices)
    where = f"DICOM series {series.uid} in {series.folder}"
    if any(s.frames > 1 and s.frame is None for s in sl):
        raise DicomError(
            f"{where}: multi-frame image without per-frame positions (no PerFrameFunctionalGroupsSequence with "
            "PlanePositionSequence); cannot place its frames. Convert the series to NIfTI (e.g. dcm2niix)."
        )
    kinds = sorted({t for s in sl for t in s.image_type if t in _NOT_VOLUME_TYPES})
    if kinds:
        raise DicomError(f"{where}: not a volume: ImageType {kinds} (localizer/projection images); skip this series.")
    if len(sl) < 2:
        raise DicomError(f"{where}: not a volume: a single 2D image ({sl[0].path}); the model needs a 3D series.")
    for tag in ("position", "orientation", "pixel_spacing"):
        bad = [s.path for s in sl if getattr(s, tag) is None]
        if bad:
            name = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient"}.get(
                tag, "PixelSpacing"
            )
            raise DicomError(f"{where}: {len(bad)} file(s) lack {name}, e.g. {bad[0]}; cannot place slices in space.")
    if len({(s.rows, s.columns) for s in sl}) > 1:
        raise DicomError(
            f"{where}: mixed image sizes {_counts([f'{s.rows}x{s.columns}' for s in sl])}; not one volume."
        )
    ori = np.array([s.orientation for s in sl], dtype=float)
    if np.abs(ori - ori[0]).max() > 1e-3:
        n_ori = len({tuple(np.round(o, 3)) for o in ori})
        raise DicomError(
            f"{where}: not a volume: {n_ori} different ImageOrientationPatient values (mixed orientations)."
        )
    pix = np.array([s.pixel_spacing for s in sl], dtype=float)
    if np.abs(pix - pix[0]).max() > 1e-3 * max(1.0, float(pix[0].max())):
        raise DicomError(f"{where}: mixed PixelSpacing {_counts([tuple(p) for p in pix])}; not one volume.")
    row_cos, col_cos = ori[0, :3], ori[0, 3:]
    normal = np.cross(row_cos, col_cos)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-2:
        raise DicomError(f"{where}: ImageOrientationPatient {ori[0].tolist()} is not two orthonormal directions.")
    pos = np.array([s.position for s in sl], dtype=float)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    sl, pos, dist = [sl[i] for i in order], pos[order], dist[order]
    steps = np.diff(dist)
    if steps.min() < 1e-3:
        k = int(np.argmin(steps))
        raise DicomError(
            f"{where}: {sl[k].path} and {sl[k + 1].path} share slice position {dist[k]:.2f} mm; the series holds "
            "several volumes (echoes, phases or time points?); split it first."
        )
    step = float(np.median(steps))
    off = np.abs(steps - step) > tol * step
    if off.any():
        k = int(np.argmax(np.abs(steps - step)))
        ratio = steps[k] / step
        gap = (
            f"missing slice(s): a gap of {steps[k]:.2f} mm between slices at {dist[k]:.2f} and {dist[k + 1]:.2f} mm "
            f"({Path(sl[k].path).name}, {Path(sl[k + 1].path).name}), expected {step:.2f} mm (about "
            f"{round(ratio) - 1} slice(s) missing)"
            if ratio > 1.5 and abs(ratio - round(ratio)) < tol
            else f"non-uniform slice spacing: steps from {steps.min():.2f} to {steps.max():.2f} mm (median {step:.2f})"
        )
        raise DicomError(f"{where}: {gap}; {int(off.sum())} irregular step(s) among {len(sl)} slices.")
    slice_vec = (pos[-1] - pos[0]) / (len(sl) - 1)
    expected = pos[0] + np.arange(len(sl))[:, None] * slice_vec
    if np.abs(pos - expected).max() > max(tol * step, 0.01):
        raise DicomError(f"{where}: slice positions are not on one line along the slice normal; not one volume.")
    tilt = float(np.degrees(np.arccos(np.clip(abs(slice_vec @ normal) / np.linalg.norm(slice_vec), -1.0, 1.0))))
    if tilt > MAX_TILT_DEGREES:
        raise DicomError(
            f"{where}: gantry tilt: the slices are stacked {tilt:.1f} degrees off their normal (a sheared volume). "
            "Tilted series are refused, not resampled. Fix: convert it with dcm2niix (which corrects the tilt) and "
            "segment the NIfTI."
        )
    dr, dc = pix[0]
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_cos * dc, col_cos * dr, slice_vec, pos[0]
    return sl, _LPS_TO_RAS @ lps


def read_series(series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """Read a series as a float32 volume in modality units (``RescaleSlope``/``Intercept`` applied per slice).

    Returns:
        ``(volume (Columns, Rows, n_slices) float32, affine (4, 4) RAS)``; ``volume[i, j, k]`` is column ``i``,
        row ``j`` of slice ``k`` (in order along the slice normal).

    Raises:
        DicomError: from :func:`series_geometry`, or a slice whose pixel data cannot be decoded, is not one grey
            channel, or does not match its header.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    slices, affine = series_geometry(series)
    first = slices[0]
    volume = np.empty((first.columns, first.rows, len(slices)), dtype=np.float32)
    cache: dict[str, Any] = {}  # a multi-frame file is read once for all its frames
    for k, s in enumerate(slices):
        ds = cache.get(s.path) or pydicom.dcmread(s.path)
        if s.frame is not None:
            cache = {s.path: ds}
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise DicomError(
                f"{s.path}: {ds.get('PhotometricInterpretation')} colour image; expected one grey channel."
            )
        try:
            arr = ds.pixel_array
        except Exception as e:  # decoder plugins raise many types; the reason is what matters
            syntax = ds.file_meta.get("TransferSyntaxUID", "?")
            name = getattr(syntax, "name", syntax)
            raise DicomError(
                f"{s.path}: cannot decode pixel data ({name}): {e}. Install a decoder (pylibjpeg, gdcm) or "
                "decompress the series (e.g. gdcmconv --raw)."
            ) from e
        if s.frame is not None:
            if arr.shape != (s.frames, s.rows, s.columns):
                raise DicomError(
                    f"{s.path}: pixel data has shape {arr.shape}, header says {(s.frames, s.rows, s.columns)} frames."
                )
            slope, intercept = s.rescale or (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0)))
            volume[:, :, k] = (arr[s.frame].astype(np.float32) * slope + intercept).T
            continue
        if arr.shape != (s.rows, s.columns):
            raise DicomError(f"{s.path}: pixel data has shape {arr.shape}, header says {(s.rows, s.columns)}.")
        volume[:, :, k] = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32).T
    return volume, affine

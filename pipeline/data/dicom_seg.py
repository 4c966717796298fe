"""DICOM SEG: write a label volume (or class probabilities) as a DICOM Segmentation referencing its source series,
code its segments, and read a SEG back as a label map (:func:`read_seg_labels`, :class:`DicomSegReader`).

Series finding, geometry and the :class:`~pipeline.data.dicom_series.DicomError` raised here live in
:mod:`pipeline.data.dicom_series`; the label grid is the one :func:`~pipeline.data.dicom_series.read_series` returns.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader

from pipeline.data.dicom_series import (
    _LPS_TO_RAS,
    DICOM_SUFFIXES,
    DicomError,
    DicomSeries,
    _one_line,
    series_geometry,
)

__all__ = [
    "DicomSegReader",
    "SEG_STORAGE",
    "is_dicom_seg",
    "read_seg_labels",
    "segment_concepts",
    "write_dicom_seg",
]

logger = logging.getLogger(__name__)

_ABNORMAL = ("Lesion", "Neoplasm", "Tumor", "Tumour", "Mass", "Nodule", "Cyst", "Metastasis")


def segment_concepts(name: str) -> tuple[Any, Any]:
    """``(segmented property category, type)`` codes for a class name.

    A name that is a SNOMED CT concept in pydicom's code dictionary (``liver``, ``left kidney``, ``hippocampus``,
    ``lesion``) gets that concept (category *Morphologically Abnormal Structure* for lesions, tumours, nodules, cysts,
    masses and metastases, else *Anatomical Structure*); any other name gets the honest generic pair *Tissue* /
    *Tissue* (the segment label keeps the name).
    """
    from pydicom.sr.codedict import codes

    key = "".join(part.capitalize() for part in str(name).replace("_", " ").replace("-", " ").split())
    try:
        concept = getattr(codes.SCT, key)
    except AttributeError:
        concept = None
    abnormal = any(word.lower() in str(name).lower() for word in _ABNORMAL)
    if concept is None:
        return (codes.cid7150.MorphologicallyAbnormalStructure, codes.SCT.Lesion) if abnormal else (
            codes.cid7150.Tissue, codes.SCT.Tissue)  # fmt: skip
    category = codes.cid7150.MorphologicallyAbnormalStructure if abnormal else codes.cid7150.AnatomicalStructure
    return category, concept


def _character_set(source: Any) -> str | list[str]:
    """The source's SpecificCharacterSet when highdicom accepts it; else UTF-8 (``ISO_IR 192``), which is a superset of
    the default repertoire an empty value means (GE and other scanners write an empty one)."""
    import highdicom as hd

    valid = {m.value for m in hd.SpecificCharacterSetValues}
    value = source.get("SpecificCharacterSet")
    values = [value] if isinstance(value, str) else list(value or [])
    if values and all(isinstance(v, str) and v in valid for v in values):
        return values[0] if len(values) == 1 else values
    return "ISO_IR 192"


def write_dicom_seg(
    series: DicomSeries,
    labels: np.ndarray,
    class_names: Mapping[int, str],
    probabilities: np.ndarray | None = None,
) -> bytes:
    """Encode a label volume (BINARY) or class probabilities (FRACTIONAL) as a DICOM Segmentation referencing the
    series' images (highdicom).

    Every class but background is a segment, numbered by its label value, labelled with its class name and coded
    with :func:`segment_concepts`; a class absent from the volume is still a segment (its frames are written empty,
    ``omit_empty_frames=False``), so segment numbers always equal label values.

    Args:
        series: the source series.
        labels: ``(Columns, Rows, n_slices)`` uint8, the grid :func:`read_series` returned; value ``v > 0`` is
            segment ``v`` named ``class_names[v]``.
        class_names: label value -> name (background 0 is not a segment).
        probabilities: ``(Columns, Rows, n_slices, C)`` float in [0, 1] (C = classes incl. background): a FRACTIONAL
            SEG of classes 1..C-1 instead of the BINARY one.

    Returns:
        the DICOM SEG file as bytes.
    """
    try:
        import highdicom as hd
        import pydicom
        from pydicom.sr.codedict import codes
    except ImportError as e:
        raise ImportError("DICOM SEG output needs highdicom: pip install 'pipeline[dicom-seg]'.") from e

    slices, _ = series_geometry(series)
    sources = [pydicom.dcmread(s.path) for s in slices]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="pipeline", family=codes.cid7162.ArtificialIntelligence, version="0.1.0"
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=str(name)[:64],
            segmented_property_category=segment_concepts(name)[0],
            segmented_property_type=segment_concepts(name)[1],
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for value, name in sorted(class_names.items())
        if value > 0
    ]
    if probabilities is None:
        # one-hot of classes 1..N as (frames, rows, columns, segments): an empty class stays a (blank) segment
        values = [v for v, _ in sorted(class_names.items()) if v > 0]
        pixels = np.stack([labels == v for v in values], axis=-1).transpose(2, 1, 0, 3).astype(np.uint8)
        kind = hd.seg.SegmentationTypeValues.BINARY
    else:
        if probabilities.shape[:3] != labels.shape or probabilities.shape[3] != len(class_names):
            raise ValueError(
                f"'probabilities' must have shape {(*labels.shape, len(class_names))} (the labels' grid x classes), "
                f"got {probabilities.shape}."
            )
        pixels = np.clip(probabilities[..., 1:], 0.0, 1.0).transpose(2, 1, 0, 3).astype(np.float32)
        kind = hd.seg.SegmentationTypeValues.FRACTIONAL
    with warnings.catch_warnings():  # scanners write one-component patient names; highdicom warns about each
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, sources, pixels, kind, descriptions)
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def _segmentation(hd: Any, sources: list[Any], pixels: np.ndarray, kind: Any, descriptions: list[Any]) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.ascontiguousarray(pixels),
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="pipeline",
        manufacturer_model_name="pipeline batch inference",
        software_versions="0.1.0",
        device_serial_number="0",
        omit_empty_frames=False,
        max_fractional_value=255,
        specific_character_set=_character_set(sources[0]),
    )


SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a DICOM Segmentation file (``Modality`` SEG / Segmentation Storage), read from its header only."""
    import pydicom

    if not str(path).lower().endswith(DICOM_SUFFIXES) or not Path(path).is_file():
        return False
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["Modality", "SOPClassUID"])
    except Exception:  # not DICOM: another reader's file
        return False
    return str(ds.get("Modality", "")) == "SEG" or str(ds.get("SOPClassUID", "")) == SEG_STORAGE


def read_seg_labels(path: str | Path, class_names: Sequence[str] | Mapping[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM SEG as a label map: segments mapped to class indices by label name, in the SEG's own grid.

    Segment labels match class names case-insensitively; a segment whose label is no class (or the background) is
    refused with the list. Where segments of different classes overlap, the higher class index wins (a lesion
    drawn inside an organ stays a lesion); the overlap is logged with its voxel count. Fractional segments count where
    their value is >= 0.5.

    Args:
        path: the SEG file.
        class_names: the model's classes, background first (a list, or ``{index: name}``).

    Returns:
        ``(labels (X, Y, Z) uint8, affine (4, 4) RAS)``, axes as :func:`read_series` returns them.

    Raises:
        DicomError: not readable as a SEG, or a segment label that is not a class.
        ImportError: highdicom is missing (``pip install 'pipeline[dicom-seg]'``).
    """
    try:
        import highdicom as hd
    except ImportError as e:
        raise ImportError(
            f"{path}: reading DICOM SEG labels needs highdicom: pip install 'pipeline[dicom-seg]'."
        ) from e
    names = [class_names[i] for i in sorted(class_names)] if isinstance(class_names, Mapping) else list(class_names)
    lookup = {str(n).lower(): i for i, n in enumerate(names) if i > 0}
    try:
        seg = hd.seg.segread(str(path))
    except Exception as e:
        raise DicomError(f"{path}: not a readable DICOM SEG ({_one_line(e)}).") from e
    numbers, classes, unknown = [], [], []
    for item in seg.SegmentSequence:
        index = lookup.get(str(item.SegmentLabel).lower())
        if index is None:
            unknown.append(str(item.SegmentLabel))
        else:
            numbers.append(int(item.SegmentNumber))
            classes.append(index)
    if unknown:
        raise DicomError(
            f"{path}: segment label(s) {unknown} are not classes of this model; expected some of {names[1:]} "
            "(case-insensitive). Fix: rename the segments, or set class_names to the SEG's labels."
        )
    volume = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    masks = np.asarray(volume.array)
    masks = masks >= 0.5 if np.issubdtype(masks.dtype, np.floating) else masks > 0
    labels: np.ndarray = np.zeros(masks.shape[:3], np.uint8)
    for s, index in sorted(enumerate(classes), key=lambda sc: sc[1]):  # ascending: higher classes win overlaps
        labels[masks[..., s]] = index
    overlap = int((masks.sum(-1) > 1).sum()) if masks.shape[-1] > 1 else 0
    if overlap:
        logger.warning(
            "%s: %d voxel(s) lie in more than one segment; the higher class index wins there.", path, overlap
        )
    lps = np.asarray(volume.affine, dtype=float)[:, [2, 1, 0, 3]]  # (slice, row, column) -> (column, row, slice)
    labels = labels.transpose(2, 1, 0)
    n_slices = int(labels.shape[2])
    if np.dot(lps[:3, 2], np.cross(lps[:3, 0], lps[:3, 1])) < 0:  # slices in order along the normal, as read_series
        labels = labels[:, :, ::-1]
        lps[:3, 3] += lps[:3, 2] * (n_slices - 1)
        lps[:3, 2] *= -1
    return np.ascontiguousarray(labels), _LPS_TO_RAS @ lps


class DicomSegReader(ImageReader):
    """MONAI ``ImageReader`` for label files that are DICOM SEG objects (see :func:`read_seg_labels`); any other
    file is left to MONAI's readers. ``LoadImaged(keys, reader=DicomSegReader(class_names))``."""

    def __init__(self, class_names: Sequence[str] | Mapping[int, str] | None) -> None:
        self.class_names = class_names

    def verify_suffix(self, filename: Any) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return len(names) == 1 and is_dicom_seg(names[0])

    def read(self, data: Any, **kwargs: Any) -> Any:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1 or not is_dicom_seg(names[0]):
            raise DicomError(f"{names}: not one DICOM SEG file.")
        return str(names[0])

    def get_data(self, img: Any) -> tuple[np.ndarray, dict[str, Any]]:
        if not self.class_names:
            raise DicomError(
                f"{img}: a DICOM SEG label needs the model's class_names to map its segments to class indices."
            )
        labels, affine = read_seg_labels(img, self.class_names)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(labels.shape),
            "space": "RAS",
            "original_channel_dim": "no_channel",
            "filename_or_obj": str(img),
        }
        return labels, meta

"""Input discovery for batch inference: every image file and DICOM series under a folder, as :class:`Case` s.

Files are found by suffix (2D models add ``.jpg``, ``.jpeg``, ``.bmp``: :data:`SUFFIXES_2D`), DICOM series by
:func:`pipeline.data.dicom_series.find_dicom_series`; hidden files/folders and the output folder are skipped. A case is
named by :func:`pipeline.data.datalist.case_id` (a file) or its ``SeriesInstanceUID`` (a series); its outputs keep its
folder relative to the input folder. The engine is :class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.data.datalist import IMAGE_SUFFIXES, DatalistError, case_id
from pipeline.data.dicom_series import DicomSeries, find_dicom_series, is_dicom_candidate
from pipeline.data.images2d import IMAGE_SUFFIXES_2D

__all__ = ["SUFFIXES_2D", "Case", "SeriesSelection", "find_cases"]

#: input suffixes of a 2D model: the 3D ones plus the 2D image formats
SUFFIXES_2D: tuple[str, ...] = tuple(dict.fromkeys((*IMAGE_SUFFIXES, *IMAGE_SUFFIXES_2D)))


@dataclass(frozen=True)
class Case:
    """One input: a NIfTI (or other image) file, or a DICOM series.

    ``input`` names it in the reports: the file path, or ``<series folder>#<SeriesInstanceUID>``.
    """

    input: str
    rel_dir: str
    name: str
    path: str | None = None
    series: DicomSeries | None = None


@dataclass(frozen=True)
class SeriesSelection:
    """Which DICOM series of a study/archive folder are segmented; every other series is listed under ``ignored``
    (``summary.json``) with the reason, never counted as a failure.

    Args:
        modalities: DICOM ``Modality`` values the model expects (the bundles: their metadata's input modality);
            empty: any.
        skip_image_types: a series with any of these ``ImageType`` values is skipped: localizers/scouts,
            projections, derived and secondary-capture images (reformats, screenshots, dose reports).
        min_slices: fewer slices is not a volume to segment.
        exclude_descriptions: regular expression on ``SeriesDescription`` (case-insensitive), e.g. ``"dose|report"``.
    """

    modalities: tuple[str, ...] = ()
    skip_image_types: tuple[str, ...] = ("LOCALIZER", "SCOUT", "PROJECTION IMAGE", "DERIVED", "SECONDARY")
    min_slices: int = 2
    exclude_descriptions: str | None = None

    @classmethod
    def of(cls, value: SeriesSelection | Mapping[str, Any] | None) -> SeriesSelection:
        """From a mapping of the fields (a bundle config), e.g. ``{"modalities": ["CT"]}``; None: the defaults."""
        if value is None or isinstance(value, SeriesSelection):
            return value or cls()
        unknown = sorted(set(value) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise ValueError(
                f"'series_selection': unknown key(s) {unknown}; expected {sorted(cls.__dataclass_fields__)}."
            )
        kw = dict(value)
        for key in ("modalities", "skip_image_types"):
            if key in kw:
                kw[key] = (kw[key],) if isinstance(kw[key], str) else tuple(str(v).upper() for v in kw[key] or ())
        if kw.get("exclude_descriptions"):
            re.compile(kw["exclude_descriptions"])  # a bad pattern fails when the bundle is parsed
        return cls(**kw)

    def reason(self, series: DicomSeries) -> str | None:
        """Why ``series`` is not segmented, or None."""
        if self.modalities and series.modality.upper() not in self.modalities:
            return f"Modality {series.modality or '?'}; the model expects {'/'.join(self.modalities)}"
        types = sorted({t for s in series.slices for t in s.image_type if t in self.skip_image_types})
        if types:
            return f"ImageType {types} (not an acquisition to segment)"
        if self.exclude_descriptions and re.search(self.exclude_descriptions, series.description, re.IGNORECASE):
            return f"SeriesDescription {series.description!r} matches {self.exclude_descriptions!r}"
        if len(series.slices) < self.min_slices:
            return f"{len(series.slices)} slice(s), fewer than min_slices={self.min_slices}"
        return None


def find_cases(
    input_dir: str | Path,
    exclude: str | Path | None = None,
    suffixes: Sequence[str] = IMAGE_SUFFIXES,
    series_selection: SeriesSelection | None = None,
) -> tuple[list[Case], list[dict[str, str]], list[dict[str, str]]]:
    """Every image file and DICOM series under ``input_dir`` (recursive; hidden files/folders skipped).

    Args:
        input_dir: the archive folder.
        exclude: a folder not to search (the output folder, when it lies inside the input folder).
        suffixes: image file endings (lower case); 2D models add ``.jpg``, ``.jpeg``, ``.bmp``.
        series_selection: which DICOM series to segment (default :class:`SeriesSelection`: any modality, no
            localizers, derived or secondary-capture series).

    Returns:
        ``(cases, failures, ignored)``: cases sorted by path; ``{"input", "stage": "discover", "reason"}`` for
        DICOM files that cannot be parsed; ``{"input", "reason"}`` for DICOM objects that are not images and for
        series the selection skips.

    Raises:
        DatalistError: the folder does not exist or holds neither image files nor DICOM.
    """
    root = Path(input_dir).resolve()
    if not root.is_dir():
        raise DatalistError(
            f"Input folder {str(root)!r} does not exist; expected a folder of NIfTI files/DICOM series."
        )
    skip = Path(exclude).resolve() if exclude is not None else None
    images: list[str] = []
    candidates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and Path(dirpath, d) != skip)
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            if fn.lower().endswith(tuple(suffixes)):
                images.append(os.path.join(dirpath, fn))
            elif is_dicom_candidate(fn):
                candidates.append(os.path.join(dirpath, fn))
    cases = [Case(p, os.path.relpath(os.path.dirname(p), root), case_id(p), path=p) for p in images]
    series, unreadable, ignored = find_dicom_series(candidates)
    selection = series_selection or SeriesSelection()
    for s in series:
        why = selection.reason(s)
        if why is None:
            cases.append(Case(f"{s.folder}#{s.uid}", os.path.relpath(s.folder, root), s.uid, series=s))
        else:
            what = f" ({s.description})" if s.description else ""
            ignored.append((f"{s.folder}#{s.uid}", f"DICOM series{what} skipped: {why}"))
    failures = [{"input": p, "stage": "discover", "reason": r} for p, r in unreadable]
    if not cases and not failures and not ignored:
        raise DatalistError(
            f"Input folder {str(root)!r} holds no image files ending in {list(suffixes)} and no DICOM series."
        )
    return sorted(cases, key=lambda c: c.input), failures, [{"input": p, "reason": r} for p, r in ignored]

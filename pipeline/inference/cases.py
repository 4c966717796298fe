"""Input discovery for batch inference: every image file and DICOM series under a folder, as :class:`Case` s.

Files are found by suffix (2D models add ``.jpg``, ``.jpeg``, ``.bmp``: :data:`SUFFIXES_2D`), DICOM series by
:func:`pipeline.data.dicom.find_dicom_series`; hidden files/folders and the output folder are skipped. A case is named
by :func:`pipeline.data.datalist.case_id` (a file) or its ``SeriesInstanceUID`` (a series); its outputs keep its
folder relative to the input folder. The engine is :class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.data.datalist import IMAGE_SUFFIXES, DatalistError, case_id
from pipeline.data.dicom import DicomSeries, find_dicom_series, is_dicom_candidate
from pipeline.data.images2d import IMAGE_SUFFIXES_2D

__all__ = ["SUFFIXES_2D", "Case", "find_cases"]

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


def find_cases(
    input_dir: str | Path, exclude: str | Path | None = None, suffixes: Sequence[str] = IMAGE_SUFFIXES
) -> tuple[list[Case], list[dict[str, str]], list[dict[str, str]]]:
    """Every image file and DICOM series under ``input_dir`` (recursive; hidden files/folders skipped).

    Args:
        input_dir: the archive folder.
        exclude: a folder not to search (the output folder, when it lies inside the input folder).
        suffixes: image file endings (lower case); 2D models add ``.jpg``, ``.jpeg``, ``.bmp``.

    Returns:
        ``(cases, failures, ignored)``: cases sorted by path; ``{"input", "stage": "discover", "reason"}`` for
        DICOM files that cannot be parsed; ``{"input", "reason"}`` for DICOM objects that are not images.

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
    cases += [Case(f"{s.folder}#{s.uid}", os.path.relpath(s.folder, root), s.uid, series=s) for s in series]
    failures = [{"input": p, "stage": "discover", "reason": r} for p, r in unreadable]
    if not cases and not failures:
        raise DatalistError(
            f"Input folder {str(root)!r} holds no image files ending in {list(suffixes)} and no DICOM series."
        )
    return sorted(cases, key=lambda c: c.input), failures, [{"input": p, "reason": r} for p, r in ignored]

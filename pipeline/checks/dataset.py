"""Dataset checks (2D and 3D): every case's files, geometry, channels, labels and intensities.

:func:`check_dataset` reports *every* problem of a dataset (never just the first), each naming the file, what was
expected, what was found and the fix. ``spatial_dims`` picks the reader, as in the transform chains: 3D reads image
headers (nibabel, no voxel data; gzip truncation is detected from the gzip trailer) or DICOM series; 2D reads files
with the 2D chains' reader (PNG/JPEG/TIFF/``.npy``/NIfTI; pixels at both levels, 2D files are small) and maps RGB(A)
masks to classes with ``label_colors``. ``level="full"`` also checks label values (integers, declared classes; every
training label all background is an error, a declared class in no label a warning) and intensities (no NaN/Inf).
:func:`check_training_data` is what both bundles' ``training`` run calls (``data_check``) before the trainer starts;
``python -m pipeline check-data`` prints the same report. Messages and fixes: ``docs/troubleshooting.md``.

Per-case checks: :mod:`pipeline.checks.cases`; the report: :mod:`pipeline.checks.report`; settings checks
(``patch_size``, ``class_names``, output folders): :mod:`pipeline.checks.settings`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.checks.cases import check_case, check_content
from pipeline.checks.images import CaseReader, ImageInfo
from pipeline.checks.report import LEVELS, CheckReport, DataCheckError
from pipeline.checks.settings import check_output_dirs, check_patch_size, class_names_problem, int_list
from pipeline.data.datalist import Problem, case_id, class_names_from_dataset, scan_datalist

__all__ = ["check_dataset", "check_training_data"]

logger = logging.getLogger(__name__)


def _resampled_size(img: ImageInfo, pixdim: Sequence[float] | None) -> list[int]:
    """Voxels per axis after the transforms' RAS orientation (3D) and resampling to ``pixdim``."""
    shape, spacing = list(img.spatial_shape), list(img.spacing)
    if len(shape) == 3 and img.affine is not None and img.affine.shape == (4, 4):
        import nibabel as nib

        order = [int(a) for a in nib.orientations.io_orientation(img.affine)[:, 0]]
        if sorted(order) == [0, 1, 2]:  # voxel axis i becomes RAS axis order[i]
            shape, spacing = [shape[order.index(k)] for k in range(3)], [spacing[order.index(k)] for k in range(3)]
    target = list(pixdim) if pixdim is not None else spacing
    return [math.floor(n * s / t + 1e-6) for n, s, t in zip(shape, spacing, target, strict=False)]


def _datalist_path(dataset_dir: str | Path, datalist: str | Path | None) -> Path:
    return Path(datalist) if datalist is not None else Path(dataset_dir) / "dataset.json"


def _missing_training_section(
    dataset_dir: str | Path, sections: Sequence[str], datalist: str | Path | None
) -> Problem | None:
    """A ``dataset.json`` without a ``training`` section (when ``training`` is checked), naming the file."""
    path = _datalist_path(dataset_dir, datalist)
    if "training" not in sections or not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # reported by scan_datalist
    if not isinstance(meta, dict) or "training" in meta:
        return None
    return Problem(
        "datalist",
        f"{path}:training",
        f"{path} has no 'training' section (it has {sorted(meta)}); expected a list of {{\"image\": ..., "
        '"label": ...} entries to train on. Fix: add a "training" list to dataset.json (a section named otherwise, '
        'e.g. "train", must be renamed), or remove dataset.json to pair imagesTr/ with labelsTr/ by file name.',
    )


def _class_presence(
    dataset_dir: str | Path,
    label_values: Sequence[tuple[str, set[int]]],
    names: Sequence[str] | None,
    datalist: str | Path | None,
) -> list[Problem]:
    """Every ``training`` label all background (an error); a declared class in no label read (a warning)."""
    training = [v for s, v in label_values if s == "training"]
    where = str(_datalist_path(dataset_dir, datalist))
    where = f"{where}:training" if Path(where).is_file() else str(Path(dataset_dir) / "labelsTr")
    if training and all(v <= {0} for v in training):
        return [
            Problem(
                "background_only",
                where,
                f"all {len(training)} training label(s) read are background only (every voxel 0); expected "
                "foreground classes in at least some of them, else the network learns to predict background "
                "everywhere. Fix: check that the labels were exported with their structures (not empty masks) "
                "and that the datalist pairs each image with its own label.",
            )
        ]
    if names is None or not label_values:
        return []
    seen = set().union(*(v for _, v in label_values))
    return [
        Problem(
            "absent_class",
            f"class {k} {names[k]!r}",
            f"declared (class_names / dataset.json labels) but present in none of the {len(label_values)} label(s) "
            "read; the network gets no example of it and its Dice stays 0. Fix: add cases that contain it, or "
            "drop the class (class_names, out_channels and dataset.json labels) if it is not in this dataset.",
            "warning",
        )
        for k in range(1, len(names))
        if k not in seen
    ]


def check_dataset(
    dataset_dir: str | Path,
    spatial_dims: int = 3,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    level: str = "full",
    sections: Sequence[str] = ("training", "validation"),
    affine_tol: float = 1e-3,
    datalist: str | Path | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> CheckReport:
    """Check every case of a 2D or 3D dataset and report all problems.

    Per case: files readable, ``spatial_dims`` spatial axes, ``in_channels`` image channels, a one-channel label
    (2D: or an RGB(A) mask whose colours are all in ``label_colors``), image and label on the same grid (3D: same
    affine); with ``level="full"`` also finite intensities and integer label values that are declared classes, not
    all background in every ``training`` label (an error), and every declared class in some label (else a warning).
    A ``dataset.json`` without a ``training`` section is named. Cases smaller than ``patch_size`` after resampling
    get a warning (they are zero-padded).

    Args:
        dataset_dir: MSD-style dataset folder (``dataset.json``, or ``imagesTr/`` + ``labelsTr/``).
        spatial_dims: 2 or 3 (the bundle's ``spatial_dims``); picks the reader, as the transform chains do.
        in_channels: image channels the network expects.
        class_names: declared classes, background first (label values must be ``0..len-1``); None: the dataset's
            ``dataset.json`` ``labels``, else values are not checked.
        patch_size: training patch size; cases smaller than it after resampling get a warning (they are padded).
        pixdim: target spacing of the transforms (for the patch-size warning); None = native grid.
        level: ``headers`` (3D: no voxel data read), ``full`` (also label values, NaN/Inf intensities) or ``off``.
        sections: datalist sections to check.
        affine_tol: allowed relative/absolute difference between image and label affines (3D).
        datalist: explicit ``dataset.json``.
        label_colors, channel_dim, color_tolerance: 2D only, as in :func:`pipeline.transforms.chains.train_transforms`.
    """
    if level not in LEVELS:
        raise ValueError(f"'level' must be one of {list(LEVELS)}, got {level!r}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")
    if spatial_dims == 3 and label_colors:
        raise ValueError(
            f"'label_colors' maps RGB(A)-coded 2D masks, but spatial_dims=3, got label_colors={label_colors!r}. "
            "Fix: set label_colors to null for 3D label maps, or spatial_dims=2 for 2D images."
        )
    report = CheckReport(str(dataset_dir))
    if level == "off":
        return report
    lists, report.problems = scan_datalist(dataset_dir, sections, datalist)
    if (missing := _missing_training_section(dataset_dir, sections, datalist)) is not None:
        report.problems = [p for p in report.problems if p.kind != "empty_dataset"] + [missing]
    items = [(s, it) for s in sections for it in lists.get(s, [])]
    report.cases = len(items)
    names = list(class_names) if class_names is not None else None
    if names is not None and (mismatch := class_names_problem(dataset_dir, names)) is not None:
        report.problems.append(mismatch)
    if names is None and (from_json := class_names_from_dataset(dataset_dir)) is not None:
        names = [from_json[k] for k in sorted(from_json)]
    declared = set(range(len(names))) if names is not None else None
    reader = CaseReader(spatial_dims, in_channels, label_colors, channel_dim, color_tolerance, len(names or []) or None)
    small: list[tuple[str, list[int]]] = []
    patch = int_list(patch_size) if patch_size is not None else None  # malformed: check_patch_size says so
    label_values: list[tuple[str, set[int]]] = []  # (section, values) of every label read (level "full")
    for section, item in items:
        problems, img, arrays = check_case(item, reader, affine_tol)
        report.problems += problems
        if level == "full" and not problems:
            try:
                found, values = check_content(item, declared, arrays)
            except Exception as e:  # a file that passed the header check but fails to decode
                report.problems.append(Problem("unreadable", item["image"], f"cannot read voxel data: {e}."))
            else:
                report.problems += found
                if values is not None:
                    label_values.append((section, values))
        if img is not None and patch is not None and len(patch) == len(img.spatial_shape):
            size = _resampled_size(img, pixdim)
            if any(n < p for n, p in zip(size, patch, strict=True)):
                small.append((case_id(item["image"]), size))
    if not any(p.kind == "label_values" for p in report.problems):  # undeclared values: remapping comes first
        report.problems += _class_presence(dataset_dir, label_values, names, datalist)
    if small:
        eg = ", ".join(f"{c} {s}" for c, s in small[:3])
        order = " (RAS order, before foreground cropping" if spatial_dims == 3 else " (rows, columns"
        report.problems.append(
            Problem(
                "small_image",
                "patch_size",
                f"{len(small)} of {len(items)} case(s) are smaller than patch_size {patch} after "
                f"resampling to pixdim {list(pixdim) if pixdim is not None else 'native'}{order}; e.g. {eg}); they "
                "are zero-padded to the patch (SpatialPadd), which works. Fix if unintended: a smaller patch_size or "
                "a finer pixdim.",
                "warning",
            )
        )
    return report


def check_training_data(
    dataset_dir: str | Path,
    spatial_dims: int = 3,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    backbone: str = "resnet10",
    level: str = "full",
    output_dirs: Sequence[str | Path] = (),
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> CheckReport:
    """Everything a bundle's ``training`` run checks before the trainer starts (``data_check``); raises on any error.

    Header problems (missing/corrupt/truncated files, shapes, affines, dims, channels, duplicates; 2D also mask
    colours), configuration problems (patch size vs network stride, unwritable outputs) and, with ``level="full"``,
    label values and NaN/Inf intensities. Warnings are logged. Arguments as :func:`check_dataset`.

    Raises:
        DataCheckError: listing every error (naming each file or key); under ``python -m monai.bundle run`` it is
            logged and the run exits with code 1.
    """
    report = CheckReport(str(dataset_dir))
    if patch_size is not None:
        report.problems += check_patch_size(patch_size, spatial_dims, backbone)
    report.problems += check_output_dirs(output_dirs)
    if level != "off":
        # 3D: headers first (no voxel data), voxels only when they are sound; 2D files are read whole: one pass
        first = level if spatial_dims == 2 else "headers"
        common: dict[str, Any] = {"label_colors": label_colors, "channel_dim": channel_dim}
        common["color_tolerance"] = color_tolerance
        args = (dataset_dir, spatial_dims, in_channels, class_names)
        headers = check_dataset(*args, patch_size, pixdim, first, **common)
        report.problems += headers.problems
        report.cases = headers.cases
        if level == "full" and first != "full" and not report.errors:
            full = check_dataset(*args, None, None, "full", **common)
            report.problems += [p for p in full.problems if p not in report.problems]
    for p in report.warnings:
        logger.warning("data check: %s", p)
    if report.errors:
        raise DataCheckError(report)
    logger.info("data check (%s): %d case(s) in %s passed.", level, report.cases, dataset_dir)
    return report

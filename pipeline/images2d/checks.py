"""Every problem of a 2D dataset at once, before training (the 2D bundle's ``data_check``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checks import CheckReport, DataCheckError, check_output_dirs, check_patch_size
from pipeline.checks.overrides import raise_for_cli
from pipeline.data import Problem, class_names_from_dataset, scan_datalist
from pipeline.images2d.files import read_image_2d
from pipeline.images2d.masks import MaskToClassesd, label_channels

__all__ = ["check_dataset_2d", "check_training_data_2d"]

logger = logging.getLogger(__name__)


def _problem(kind: str, where: str, *parts: str, severity: str = "error") -> Problem:
    return Problem(kind, where, "".join(parts), severity)


def _read_checked(
    path: str, role: str, channels: int, channel_dim: Any, palette_as_index: bool, problems: list[Problem]
) -> np.ndarray | None:
    """Channel-first array of one file, or None after recording why it cannot be used."""
    try:
        arr, meta = read_image_2d(path, channels, channel_dim, palette_as_index)
    except Exception as e:  # readers raise many types for corrupt files
        fix = "Fix: re-export the file as PNG/TIFF/.npy/NIfTI."
        problems.append(_problem("unreadable", path, f"not a readable 2D {role} ({type(e).__name__}: {e}). ", fix))
        return None
    axis = meta["original_channel_dim"]
    arr = arr[None] if math.isnan(axis) else np.moveaxis(arr, int(axis), 0)
    if arr.ndim != 3:
        problems.append(
            _problem(
                "wrong_dims", path, f"{role} has spatial shape {list(arr.shape[1:])}, a {arr.ndim - 1}D image, but "
                "this is the 2D bundle (spatial_dims=2). Fix: use the 3D bundle for volumes, or give 2D slices.",
            )
        )  # fmt: skip
        return None
    return arr


def _case(
    item: Mapping[str, str],
    in_channels: int,
    mapper: MaskToClassesd,
    label_colors: Any,
    channel_dim: Any,
    names: list[str] | None,
    full: bool,
) -> tuple[list[Problem], np.ndarray | None]:
    problems: list[Problem] = []
    image, label = item["image"], item.get("label")
    img = _read_checked(image, "image", in_channels, channel_dim, False, problems)
    lab = None
    if label is not None:
        lab = _read_checked(label, "label", label_channels(label_colors), channel_dim, not label_colors, problems)
    if img is not None and img.shape[0] != in_channels:
        problems.append(
            _problem(
                "wrong_channels", image, f"image has {img.shape[0]} channel(s), expected {in_channels} (in_channels). "
                f"Fix: set in_channels, or give {in_channels}-channel files (.npy/.tif stacks for many channels).",
            )
        )  # fmt: skip
    if img is not None and lab is not None and img.shape[1:] != lab.shape[1:]:
        problems.append(
            _problem(
                "shape_mismatch", str(label), f"label size {list(lab.shape[1:])} differs from image {image} size "
                f"{list(img.shape[1:])} (rows, columns); expected the same size. Fix: pair the right files, or export "
                "the mask at the image's size (no resizing of masks with interpolation).",
            )
        )  # fmt: skip
    if lab is not None and label is not None and not problems:
        try:
            classes = np.asarray(mapper.map(lab))  # channel count; colours -> classes (an unknown colour raises)
        except ValueError as e:
            problems.append(_problem("label_values", label, str(e).removeprefix(f"{label}: ")))
        else:
            bad = sorted({float(v) for v in np.unique(classes)} - {float(c) for c in range(len(names or []))})
            if full and names is not None and bad:
                problems.append(
                    _problem(
                        "label_values", label, f"label values {bad[:10]} are not class indices 0..{len(names) - 1} "
                        f"{names}. Fix: remap them, declare the classes (class_names), or for colour-coded masks set "
                        "label_colors.",
                    )
                )  # fmt: skip
    if img is not None and full and img.dtype.kind == "f" and not np.isfinite(img).all():
        n_bad = int((~np.isfinite(img)).sum())
        fix = "Fix: re-export the image, or replace them (np.nan_to_num)."
        problems.append(_problem("non_finite", image, f"{n_bad} NaN/Inf pixel(s); expected finite values. ", fix))
    return problems, img


def check_dataset_2d(
    dataset_dir: str | Path,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    level: str = "full",
    sections: Sequence[str] = ("training", "validation"),
) -> CheckReport:
    """Check every case of a 2D dataset and report all problems (like :func:`pipeline.checks.check_dataset`).

    Per case: files readable and 2D, ``in_channels`` image channels, a one-channel index mask (or an RGB(A) mask whose
    colours are all in ``label_colors``), image and label of the same size; with ``level="full"`` also finite
    intensities and label values that are declared classes. Images smaller than ``patch_size`` get a warning (they
    are zero-padded). Pixels are read at both levels (2D files are small).

    Args:
        dataset_dir: MSD-style folder (``dataset.json``, or ``imagesTr/`` + ``labelsTr/``).
        in_channels: image channels the network takes.
        class_names: classes (index 0 first); None: ``dataset.json`` ``labels``, else values are not checked.
        patch_size: training patch ``(H, W)``.
        label_colors, channel_dim, color_tolerance: as in :func:`pipeline.images2d.train_transforms_2d`.
        level: ``headers``, ``full`` or ``off``.
        sections: datalist sections to check.
    """
    report = CheckReport(str(dataset_dir))
    if level == "off":
        return report
    if level not in ("headers", "full"):
        raise ValueError(f"'level' must be one of ['headers', 'full', 'off'], got {level!r}.")
    lists, report.problems = scan_datalist(dataset_dir, sections)
    items = [it for s in sections for it in lists.get(s, [])]
    report.cases = len(items)
    names = list(class_names) if class_names is not None else None
    if names is None and (from_json := class_names_from_dataset(dataset_dir)) is not None:
        names = [from_json[k] for k in sorted(from_json)]
    mapper = MaskToClassesd("label", label_colors, color_tolerance, len(names) if names else None)
    small: list[str] = []
    for item in items:
        problems, img = _case(item, in_channels, mapper, label_colors, channel_dim, names, level == "full")
        report.problems += problems
        if img is not None and patch_size is not None and any(n < p for n, p in zip(img.shape[1:], patch_size)):  # noqa: B905
            small.append(f"{Path(item['image']).name} {list(img.shape[1:])}")
    if small:
        report.problems.append(
            _problem(
                "small_image", "patch_size", f"{len(small)} of {len(items)} image(s) are smaller than patch_size "
                f"{list(patch_size or [])} (e.g. {', '.join(small[:3])}); they are zero-padded to the patch, which "
                "works. Fix if unintended: a smaller patch_size.", severity="warning",
            )
        )  # fmt: skip
    return report


def check_training_data_2d(
    dataset_dir: str | Path,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    backbone: str = "resnet18",
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
    level: str = "full",
    output_dirs: Sequence[str | Path] = (),
) -> CheckReport:
    """What the 2D bundle's ``training`` run checks before the trainer starts; raises listing every error.

    Raises:
        DataCheckError: (under ``python -m monai.bundle run``: logged, exit code 1).
    """
    report = CheckReport(str(dataset_dir))
    if patch_size is not None:
        report.problems += check_patch_size(patch_size, 2, backbone)
    report.problems += check_output_dirs(output_dirs)
    data = check_dataset_2d(
        dataset_dir, in_channels, class_names, patch_size, label_colors, channel_dim, color_tolerance, level
    )
    report.problems += data.problems
    report.cases = data.cases
    for p in report.warnings:
        logger.warning("data check: %s", p)
    if report.errors:
        raise_for_cli(DataCheckError(report))
    logger.info("data check (%s): %d case(s) in %s passed.", level, report.cases, dataset_dir)
    return report

"""Checks of one case (2D and 3D): files, dims, channels, image/label grid and affine; label values and intensities.

Used by :func:`pipeline.checks.dataset.check_dataset` for every case of a dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from pipeline.checks.images import CaseReader, ImageInfo, load_array
from pipeline.data.datalist import Problem

__all__ = ["check_case", "check_content"]


def _dims_problem(info: ImageInfo, spatial_dims: int) -> Problem | None:
    nd = len(info.spatial_shape)
    if nd == spatial_dims:
        return None
    what = {2: "a 2D image", 3: "a 3D volume"}.get(nd, f"a {nd}D image")
    fix = "use the 2D bundle" if nd == 2 else "use the 3D bundle (or give 2D slices)"
    return Problem(
        "wrong_dims",
        info.path,
        f"is {what} (spatial shape {list(info.spatial_shape)}), but this bundle has spatial_dims={spatial_dims}. "
        f"Fix: {fix}, or set spatial_dims to match the data.",
    )


def check_content(
    item: Mapping[str, str], declared: set[int] | None, arrays: Mapping[str, np.ndarray]
) -> tuple[list[Problem], set[int] | None]:
    """Intensities finite, labels integer and declared; ``arrays`` holds pixels already read (2D), else loaded.

    Returns ``(problems, label values found)``; the values are None without a label.
    """
    problems: list[Problem] = []
    image, label = item["image"], item.get("label")
    if not os.path.isdir(image):
        arr = arrays["image"] if "image" in arrays else load_array(image)
        if arr.dtype.kind in "fc":
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            if n_nan or n_inf:
                problems.append(
                    Problem(
                        "non_finite",
                        image,
                        f"{n_nan} NaN and {n_inf} Inf voxel(s); expected finite intensities (they turn the whole "
                        "normalised image and the loss into NaN). Fix: re-export the image, or replace them "
                        "(e.g. np.nan_to_num(x, nan=background)) and check the conversion tool.",
                    )
                )
    if label is None:
        return problems, None
    lab = arrays["label"] if "label" in arrays else load_array(label)
    if lab.dtype.kind in "fc":
        finite = np.isfinite(lab)
        frac = ~finite | (lab != np.rint(np.where(finite, lab, 0)))
        if frac.any():
            examples = sorted({float(v) for v in np.unique(lab[frac])[:5]})
            problems.append(
                Problem(
                    "float_labels",
                    label,
                    f"non-integer label values, e.g. {examples} ({int(frac.sum())} voxels); expected integer class "
                    "indices. Fix: the label was probably resampled with linear interpolation; redo it with nearest "
                    "neighbour, or re-save with np.rint(x).astype(np.uint8) if rounding is right.",
                )
            )
        lab = np.rint(np.where(finite, lab, 0))
    values = {int(v) for v in np.unique(lab)}
    if declared is not None and values - declared:
        bad = sorted(values - declared)
        colours = " For colour-coded 2D masks set label_colors." if "label" in arrays else ""
        problems.append(
            Problem(
                "label_values",
                label,
                f"label values {bad} are not declared classes {sorted(declared)} (class_names has {len(declared)} "
                f"entries). Fix: remap those values, or declare the classes (class_names / out_channels).{colours}",
            )
        )
    return problems, values


def check_case(
    item: Mapping[str, str], reader: CaseReader, affine_tol: float
) -> tuple[list[Problem], ImageInfo | None, dict[str, np.ndarray]]:
    """Geometry problems of one case (files, dims, channels, shapes, affines); 2D also label channels/colours.

    Returns ``(problems, image geometry, pixels read)``; the pixels (2D: ``image (C, H, W)``, ``label`` class
    indices) spare :func:`check_content` a second read.
    """
    problems: list[Problem] = []
    infos: dict[str, ImageInfo] = {}
    arrays: dict[str, np.ndarray] = {}
    for key in ("image", "label"):
        path = item.get(key)
        if path is None:
            continue
        found, info, arr = reader.read(path, key)
        problems += found
        if info is not None:
            infos[key] = info
        if arr is not None:
            arrays[key] = arr
    img, lab = infos.get("image"), infos.get("label")
    for info, role in ((img, "image"), (lab, "label")):
        if info is None:
            continue
        if (p := _dims_problem(info, reader.spatial_dims)) is not None:
            problems.append(p)
        if role == "label" and reader.spatial_dims == 2:
            continue  # channels of 2D masks (1, or those of label_colors; RGBA for RGB) are checked by the mapping
        want = reader.in_channels if role == "image" else 1
        if info.channels != want:
            fix = "Fix: set in_channels to match, or give" if role == "image" else "Fix: give"
            problems.append(
                Problem(
                    "wrong_channels",
                    info.path,
                    f"{role} has {info.channels} channel(s), expected {want}"
                    f"{' (in_channels)' if role == 'image' else ' (one label map)'}. {fix} {want}-channel files.",
                )
            )
    if img is not None and lab is not None:
        if img.spatial_shape != lab.spatial_shape:
            fix = (
                "pair the right files, or export the mask at the image's size (no resizing of masks with interpolation)"
                if reader.spatial_dims == 2
                else "resample the label onto the image grid (nearest neighbour) or pair the right files"
            )
            problems.append(
                Problem(
                    "shape_mismatch",
                    lab.path,
                    f"label shape {list(lab.spatial_shape)} differs from image {img.path} shape "
                    f"{list(img.spatial_shape)}; expected the same voxel grid. Fix: {fix}.",
                )
            )
        elif (
            reader.spatial_dims == 3  # 2D chains ignore affines (PNG/TIFF have none)
            and img.affine is not None
            and lab.affine is not None
            and img.affine.shape == lab.affine.shape
            and not np.allclose(img.affine, lab.affine, rtol=affine_tol, atol=affine_tol)
        ):
            diff = float(np.abs(img.affine - lab.affine).max())
            problems.append(
                Problem(
                    "affine_mismatch",
                    lab.path,
                    f"label affine differs from image {img.path} affine by up to {diff:.4g} (tolerance "
                    f"{affine_tol:g}); expected the same position/orientation/spacing, else image and label are "
                    "resampled apart. Fix: if they share the grid, copy the image affine into the label header; "
                    f"otherwise resample the label.\n      image {img.affine[:3].round(4).tolist()}\n      "
                    f"label {lab.affine[:3].round(4).tolist()}",
                )
            )
    if "label" in arrays and not problems:
        found, classes = reader.label_classes(arrays["label"], item["label"])
        problems += found
        arrays["label"] = classes if classes is not None else arrays["label"]
    return problems, img, arrays

"""Fingerprint a dataset for planning: what :mod:`pipeline.apps.plan` derives a bundle's settings from.

:func:`fingerprint_dataset` reads each labelled case once: spacing, shape and orientation (3D: in the RAS order the
transforms use), channels, intensity statistics inside the foreground per channel (label > 0), the class names and
fractions (:func:`pipeline.apps.audit.audit_dataset`) and the modality of each channel (``dataset.json``
``modality``, or nnU-Net v2 ``channel_names``).

The planning data types live here, below both planners: :class:`Fingerprint` (measured), :class:`Plan` (derived by
:func:`pipeline.apps.plan.make_plan`, extended by :func:`pipeline.apps.transfer_plan.transfer_plan`) and
:class:`PlanError`, so ``plan`` and ``transfer_plan`` share them without importing each other both ways.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.apps.audit import Recommendation, audit_dataset
from pipeline.checks.images import load_array, read_image_info, read_info_2d
from pipeline.data.datalist import case_id, load_datalist, load_split
from pipeline.transforms.labels2d import label_colors_from_dataset

__all__ = [
    "PERCENTILES",
    "SAMPLES_PER_CASE",
    "CaseFingerprint",
    "ChannelStats",
    "Fingerprint",
    "Plan",
    "PlanError",
    "fingerprint_dataset",
]

logger = logging.getLogger(__name__)

PERCENTILES = (0.5, 99.5)
SAMPLES_PER_CASE = 20000  # foreground voxels sampled per case and channel for the intensity statistics
_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")


class PlanError(ValueError):
    """The dataset cannot be planned (mixed channels, 2D data for a 3D bundle, label errors, ...); says the fix."""


@dataclass
class CaseFingerprint:
    """One case: spatial shape and spacing (3D: RAS order, as the transforms see it), orientation, channels."""

    case: str
    shape: list[int]
    spacing: list[float]
    axcodes: str = ""
    channels: int = 1


@dataclass
class ChannelStats:
    """Intensities of one image channel inside the foreground (label > 0), sampled over all cases."""

    p_low: float
    p_high: float
    mean: float
    std: float
    min: float
    max: float
    case_medians: list[float] = field(default_factory=list)  # foreground median of each case


@dataclass
class Fingerprint:
    """What the plan depends on; :func:`fingerprint_dataset` measures it, tests may write one by hand."""

    dataset_dir: str
    spatial_dims: int
    cases: list[CaseFingerprint]
    class_names: dict[int, str]
    class_source: str
    recommendation: Recommendation
    modalities: list[str]
    modality_source: str
    channels: list[ChannelStats]
    n_train: int
    fractions: dict[str, float] = field(default_factory=dict)
    label_colors: dict[str, list[int]] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """The bundle override (``values``, the ``--args_file`` JSON) and why each value is what it is."""

    values: dict[str, Any]
    reasons: dict[str, list[str]]
    bundle: str
    fingerprint: Fingerprint


def _modalities(dataset_dir: Path) -> tuple[list[str] | None, str]:
    path = dataset_dir / "dataset.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("modality", "channel_names"):
        if isinstance(meta.get(key), dict) and meta[key]:
            return [str(v) for _, v in sorted(meta[key].items(), key=lambda kv: int(kv[0]))], f"{path} {key}"
    return None, "no dataset.json modality"


def _ras(shape: Sequence[int], spacing: Sequence[float], affine: np.ndarray | None) -> tuple[list[int], list[float]]:
    """Shape and spacing in the order the 3D transforms see them (after ``Orientationd("RAS")``)."""
    shape, spacing = [int(n) for n in shape], [float(s) for s in spacing]
    if len(shape) == 3 and affine is not None and affine.shape == (4, 4):
        import nibabel as nib

        order = [int(a) for a in nib.orientations.io_orientation(affine)[:, 0]]
        if sorted(order) == [0, 1, 2]:
            shape, spacing = [shape[order.index(k)] for k in range(3)], [spacing[order.index(k)] for k in range(3)]
    return shape, spacing


def _read_case(item: dict[str, str], dims: int, label_colors: Any) -> tuple[CaseFingerprint, np.ndarray, np.ndarray]:
    """Geometry, image voxels ``(N, C)`` and foreground mask ``(N,)`` of one case."""
    from pipeline.checks.images import CaseReader

    if dims == 2:
        info, img = read_info_2d(item["image"])
        reader = CaseReader(2, label_colors=label_colors)
        problems, _, lab = reader.read(item["label"], "label")
        classes = reader.label_classes(lab, item["label"])[1] if lab is not None and not problems else None
        if classes is None:
            raise PlanError(f"{item['label']}: cannot read the label as class indices; run check-data on it.")
        voxels, fg = img.reshape(img.shape[0], -1).T, np.asarray(classes).ravel() > 0
        case = CaseFingerprint(case_id(item["image"]), list(info.spatial_shape), list(info.spacing), "", img.shape[0])
        return case, voxels, fg
    info = read_image_info(item["image"])
    arr, lab = np.asarray(load_array(item["image"])), np.asarray(load_array(item["label"]))
    shape, spacing = _ras(info.spatial_shape, info.spacing, info.affine)
    import nibabel as nib

    axcodes = "".join(str(c) for c in nib.aff2axcodes(info.affine)) if info.affine is not None else ""
    voxels = arr.reshape(int(np.prod(info.spatial_shape)), -1) if arr.ndim > 3 else arr.reshape(-1, 1)
    fg = lab.reshape(-1) > 0 if lab.size == voxels.shape[0] else np.ones(voxels.shape[0], bool)
    return CaseFingerprint(case_id(item["image"]), shape, spacing, axcodes, int(voxels.shape[1])), voxels, fg


def _spatial_dims(path: str) -> int:
    if path.lower().endswith(_2D_SUFFIXES):
        return 2
    return len(read_image_info(path).spatial_shape)


def fingerprint_dataset(
    dataset_dir: str | Path,
    spatial_dims: int | None = None,
    sections: tuple[str, ...] = ("training", "validation"),
    seed: int = 0,
) -> Fingerprint:
    """Measure what a plan needs from the labelled cases of ``sections`` (see the module docstring).

    Args:
        dataset_dir: MSD-style folder (``dataset.json``, or ``imagesTr/`` + ``labelsTr/``).
        spatial_dims: 2 or 3; None: from the first image (PNG/TIFF/JPEG/``.npy`` or a 2D NIfTI -> 2).
        sections: datalist sections to read.
        seed: for the foreground voxels sampled per case.

    Raises:
        PlanError: no labelled cases, cases with different channel counts, or label problems (audit errors).
    """
    root = Path(dataset_dir)
    items = [it for s in sections for it in load_datalist(root, s) if it.get("label")]
    if not items:
        raise PlanError(f"No labelled cases in sections {list(sections)} of {str(root)!r}; a plan needs labels.")
    dims = spatial_dims or _spatial_dims(items[0]["image"])
    colours = label_colors_from_dataset(root) if dims == 2 else None
    audit = audit_dataset(root, sections=sections, spatial_dims=dims, label_colors=colours)
    if audit.errors:
        listed = "\n  ".join(audit.errors[:10])
        raise PlanError(
            f"{len(audit.errors)} label problem(s) in {root}; a plan of broken labels would mislead:\n  {listed}\n"
            f"Fix them (python -m pipeline check-data {root} explains each), then plan again."
        )
    rng = np.random.default_rng(seed)
    cases, samples, medians = [], [], []
    for item in items:
        case, voxels, fg = _read_case(item, dims, colours)
        cases.append(case)
        inside = voxels[fg] if fg.any() else voxels
        if len(inside) > SAMPLES_PER_CASE:
            inside = inside[rng.choice(len(inside), SAMPLES_PER_CASE, replace=False)]
        samples.append(inside.astype(np.float64))
        medians.append(np.median(inside, axis=0))
    counts = sorted({c.channels for c in cases})
    if len(counts) > 1:
        eg = {n: next(c.case for c in cases if c.channels == n) for n in counts}
        raise PlanError(
            f"cases have different channel counts {counts} (e.g. {eg}); expected one count for all. "
            "Fix: give every case the same channels (same order), e.g. split or stack the files."
        )
    pooled = np.concatenate(samples)
    channels = []
    for c in range(counts[0]):
        x = pooled[:, c]
        lo, hi = np.percentile(x, PERCENTILES)
        channels.append(
            ChannelStats(
                float(lo),
                float(hi),
                float(x.mean()),
                float(x.std()),
                float(x.min()),
                float(x.max()),
                [float(m[c]) for m in medians],
            )
        )
    modalities, source = _modalities(root)
    notes = list(audit.notes)
    if modalities is None:
        modalities = ["unknown"] * counts[0]
    elif len(modalities) != counts[0]:
        notes.append(f"{source} names {len(modalities)} channel(s), the images have {counts[0]}; modality ignored.")
        modalities = ["unknown"] * counts[0]
    fractions = {r["name"]: float(r["fraction"]) for r in audit.classes}
    assert audit.recommendation is not None
    return Fingerprint(
        str(root),
        dims,
        cases,
        dict(audit.class_names),
        audit.class_source,
        audit.recommendation,
        modalities,
        source,
        channels,
        len(load_split(root, "training")),
        fractions,
        colours,
        notes,
    )

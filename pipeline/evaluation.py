"""Ignite / MONAI glue for evaluation: per-class validation metrics by name, the per-case writer, image logging.

- :class:`PerClassMetric` — Dice or IoU per class as a metric handler. ``reduction="mean_batch"`` returns
  ``{"val/dice/<class>": value}``; Ignite flattens that dict into ``engine.state.metrics``, so
  ``TensorBoardStatsHandler`` writes one scalar per class by name and ``StatsHandler`` prints them.
  ``reduction="mean"`` (macro over foreground classes) or a class name gives the scalar key metric.
- :class:`CaseMetricsWriter` — attached to an evaluator, writes ``metrics_per_case.csv``, ``summary.json``,
  ``summary.md`` and ``cases.json`` (source paths per case) at ``COMPLETED``.
- :class:`ValidationImageLogger` — a few (image | label | prediction) slices to TensorBoard.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing
from monai.handlers import from_engine
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou

from pipeline.atomic import write_text
from pipeline.metrics import as_onehot, case_metrics, metric_dtype, write_evaluation

__all__ = [
    "CaseMetricsWriter",
    "PerClassMetric",
    "ValidationImageLogger",
    "case_id_from_path",
    "normalize_class_names",
    "spacing_of",
]

logger = logging.getLogger(__name__)

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npz", ".npy", ".png", ".tif", ".tiff", ".dcm")


def normalize_class_names(class_names: Sequence[str] | Mapping[Any, str]) -> dict[int, str]:
    """``["background", "organ"]`` or a ``channel_def`` like ``{"0": "background"}`` -> ``{0: "background", ...}``."""
    if isinstance(class_names, Mapping):
        try:
            out = {int(k): str(v) for k, v in class_names.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"'class_names' keys must be class indices like '1', got {list(class_names)!r}.") from e
    elif isinstance(class_names, Sequence) and not isinstance(class_names, str):
        out = {i: str(v) for i, v in enumerate(class_names)}
    else:
        raise TypeError(f"'class_names' must be a list or a mapping index -> name, got {class_names!r}.")
    if not out or len(set(out.values())) != len(out):
        raise ValueError(f"'class_names' must be non-empty with unique names, got {class_names!r}.")
    return out


def case_id_from_path(path: str | os.PathLike[str], postfix: str = "") -> str:
    """Case id of an image/label/prediction file: basename without extensions (and without ``_<postfix>``)."""
    name = Path(str(path).rstrip("/\\")).name
    for ext in _EXTENSIONS:
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    if postfix and name.endswith(f"_{postfix}"):
        name = name[: -len(postfix) - 1]
    return name


def spacing_of(x: Any) -> tuple[float, ...] | None:
    """Voxel spacing (mm) of a channel-first ``(C, H, W[, D])`` MetaTensor from its affine; ``None`` otherwise."""
    if not isinstance(x, MetaTensor):
        return None
    r = x.ndim - 1
    affine = x.affine
    if affine.ndim != 2 or affine.shape[0] - 1 < r:
        return None
    return tuple(float(s) for s in affine_to_spacing(affine, r=r))


class _ClassScore(CumulativeIterationMetric):
    """Dice or IoU per (case, class) with our empty-mask rule: both empty -> NaN (excluded), FP-only -> 0."""

    def __init__(self, metric: str, class_names: dict[int, str], include_background: bool, reduction: str) -> None:
        super().__init__()
        self.metric, self.reduction = metric, reduction
        self.num_classes = max(class_names) + 1
        self.indices = [c for c in sorted(class_names) if c > 0 or include_background]
        self.names = [class_names[c] for c in self.indices]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        p = torch.stack([as_onehot(v, self.num_classes, "pred") for v in y_pred])
        t = torch.stack([as_onehot(v, self.num_classes, "label") for v in y])
        p, t = p.to(metric_dtype(p)), t.to(metric_dtype(t))
        fn = compute_dice if self.metric == "dice" else compute_iou
        score = fn(p, t, include_background=True, ignore_empty=False)
        spatial = tuple(range(2, p.ndim))
        both_empty = (p.sum(spatial) == 0) & (t.sum(spatial) == 0)
        score = torch.where(both_empty, torch.full_like(score, float("nan")), score)
        return score[:, self.indices]

    def per_class(self) -> list[float]:
        buf = self.get_buffer()
        if not isinstance(buf, torch.Tensor) or buf.numel() == 0:
            return [math.nan] * len(self.indices)
        return [float(v) for v in torch.nanmean(buf.double(), dim=0)]

    def aggregate(self) -> Any:  # type: ignore[override]
        values = self.per_class()
        if self.reduction == "mean_batch":
            return dict(zip(self.names, values, strict=True))
        if self.reduction == "mean":
            valid = [v for v in values if not math.isnan(v)]
            if not valid:
                logger.warning(
                    "no class has a valid %s score (all absent in reference and prediction); 0.0", self.metric
                )
            return float(np.mean(valid)) if valid else 0.0
        value = values[self.names.index(self.reduction)]
        return 0.0 if math.isnan(value) else value


class PerClassMetric(IgniteMetricHandler):
    """Dice or IoU per class over a validation run, logged by class name.

    Args:
        class_names: ``["background", "organ", ...]`` (index = channel) or ``channel_def``-style mapping.
        metric: ``"dice"`` or ``"iou"``.
        reduction: ``"mean_batch"``: a dict ``{tag.format(metric=..., name=class): mean over cases}`` (Ignite puts
            each item into ``engine.state.metrics`` as a scalar); ``"mean"``: a scalar, the mean of the per-class
            means (macro, foreground unless ``include_background``) — the default key metric; a class name: that
            class's mean as a scalar. A class absent in both prediction and reference of a case is left out of
            that class's mean; a false positive on an absent class scores 0.
        include_background: also score channel 0.
        tag: key format for ``"mean_batch"``.
        output_transform: engine output -> ``(y_pred, y)``; each ``(B, C, H, W[, D])`` one-hot or
            ``(B, 1, H, W[, D])`` label maps, or lists of channel-first items.
        save_details: keep the ``(N, classes)`` per-case scores in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        class_names: Sequence[str] | Mapping[Any, str],
        metric: str = "dice",
        reduction: str = "mean",
        include_background: bool = False,
        tag: str = "val/{metric}/{name}",
        output_transform: Callable = from_engine(["pred", "label"]),
        save_details: bool = True,
    ) -> None:
        names = normalize_class_names(class_names)
        if metric not in ("dice", "iou"):
            raise ValueError(f"'metric' must be 'dice' or 'iou', got {metric!r}.")
        scored = [n for c, n in sorted(names.items()) if c > 0 or include_background]
        if reduction not in ("mean", "mean_batch", *scored):
            raise ValueError(
                f"'reduction' must be 'mean', 'mean_batch' or a scored class name {scored}, got {reduction!r}."
            )
        self.tag = tag
        fn = _ClassScore(metric, names, include_background, reduction)
        super().__init__(metric_fn=fn, output_transform=output_transform, save_details=save_details)

    def compute(self) -> Any:
        result = super().compute()
        if isinstance(result, dict):
            fn = self.metric_fn
            assert isinstance(fn, _ClassScore)
            return {self.tag.format(metric=fn.metric, name=k): v for k, v in result.items()}
        return result


def _output_items(output: Any) -> list[Mapping[str, Any]]:
    """Decollated items of an engine output: a list of dicts already, or one batched dict to decollate."""
    if isinstance(output, Mapping):
        return list(decollate_batch(dict(output), detach=True))
    return list(output or [])


def _source(item: Mapping[str, Any], key: str) -> str | None:
    v = item.get(key)
    meta = v.meta if isinstance(v, MetaTensor) else item.get(f"{key}_meta_dict") or {}
    src = meta.get("filename_or_obj")
    if isinstance(src, (list, tuple)):
        src = src[0] if src else None
    return str(src) if src else None


class CaseMetricsWriter:
    """Collect :func:`pipeline.metrics.case_metrics` rows over an evaluator run and write the tables.

    On each ``ITERATION_COMPLETED`` it reads the decollated ``engine.state.output`` items (``pred`` / ``label``
    channel-first, one-hot or label maps); the case id is the basename of the ``image`` (else ``label``) meta
    ``filename_or_obj``; the spacing comes from the label's (else prediction's) affine. At ``COMPLETED`` it writes
    ``metrics_per_case.csv``, ``summary.json``, ``summary.md`` and ``cases.json`` into ``output_dir`` atomically
    (rank 0 only under DDP, after gathering every rank's rows).

    Args:
        output_dir: folder for the tables (created).
        class_names: list or ``channel_def``-style mapping, see :func:`normalize_class_names`.
        include_background: also report class 0.
        pred_key, label_key, image_key: keys of the output items.
        spacing: fixed spacing (mm) overriding the affine; ``None`` reads it from the MetaTensors.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        class_names: Sequence[str] | Mapping[Any, str],
        include_background: bool = False,
        pred_key: str = "pred",
        label_key: str = "label",
        image_key: str = "image",
        spacing: Sequence[float] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = normalize_class_names(class_names)
        self.include_background = include_background
        self.pred_key, self.label_key, self.image_key = pred_key, label_key, image_key
        self.spacing = spacing
        self.rows: list[dict[str, Any]] = []
        self.sources: dict[str, dict[str, str | None]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.rows, self.sources = [], {}

    def iteration_completed(self, engine: Engine) -> None:
        for item in _output_items(engine.state.output):
            self.add_case(item)

    def add_case(self, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Score one decollated item; returns its rows."""
        for key in (self.pred_key, self.label_key):
            if key not in item:
                raise KeyError(f"evaluator output has no {key!r} (keys: {sorted(item)}); set pred_key/label_key.")
        pred, label = item[self.pred_key], item[self.label_key]
        src = _source(item, self.image_key) or _source(item, self.label_key)
        case = case_id_from_path(src) if src else f"case_{len(self.sources):04d}"
        if case in self.sources:
            n = 2
            while f"{case}#{n}" in self.sources:
                n += 1
            logger.warning("case id %r seen twice in one run; recording it as %r", case, f"{case}#{n}")
            case = f"{case}#{n}"
        spacing = self.spacing if self.spacing is not None else spacing_of(label) or spacing_of(pred)
        rows = case_metrics(pred, label, self.class_names, spacing, self.include_background, case)
        pred_meta = pred.meta if isinstance(pred, MetaTensor) else {}
        self.sources[case] = {
            "image": _source(item, self.image_key),
            "label": _source(item, self.label_key),
            "pred": str(pred_meta["saved_to"]) if pred_meta.get("saved_to") else None,
        }
        self.rows.extend(rows)
        return rows

    def completed(self, engine: Engine | None = None) -> None:
        rows, sources = self.rows, self.sources
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (rows, sources))
            if torch.distributed.get_rank() != 0:
                return
            rows = [r for g in gathered for r in g[0]]
            sources = {k: v for g in gathered for k, v in g[1].items()}
        if not rows:
            (engine.logger if engine else logger).warning("CaseMetricsWriter: no cases seen; nothing written")
            return
        paths = write_evaluation(rows, self.output_dir)
        write_text(self.output_dir / "cases.json", json.dumps(sources, indent=2) + "\n")
        (engine.logger if engine else logger).info("evaluation tables written: %s", paths["csv"].parent)


def _slice_through(label_map: np.ndarray) -> int:
    """Index along the last axis at the middle of the foreground's extent (middle slice if empty)."""
    idx = np.nonzero(label_map.reshape(-1, label_map.shape[-1]).any(0))[0]
    return int((idx[0] + idx[-1]) // 2) if idx.size else label_map.shape[-1] // 2


def _to_label_map(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    return (a.argmax(0) if a.shape[0] > 1 else a[0]).astype(np.float32)


class ValidationImageLogger:
    """Log (image | label | prediction) panels of the first ``max_cases`` cases of each validation run.

    Panels are grayscale, side by side; for 3D the slice along the last axis through the middle of the labelled
    structure is shown. Tags are ``<tag>/<case id>``; the step is the evaluator's (= trainer's) epoch.

    Args:
        summary_writer: a ``SummaryWriter``; if ``None`` one is created in ``log_dir``.
        log_dir: where to create the writer.
        max_cases: cases per run.
        num_classes: scales label values to [0, 1]; default: the label's channel count (one-hot) or its maximum.
        tag: tag prefix.
    """

    def __init__(
        self,
        summary_writer: Any = None,
        log_dir: str | os.PathLike[str] = "./runs",
        max_cases: int = 2,
        num_classes: int | None = None,
        tag: str = "val/images",
        image_key: str = "image",
        label_key: str = "label",
        pred_key: str = "pred",
    ) -> None:
        if summary_writer is None:
            from torch.utils.tensorboard import SummaryWriter

            summary_writer = SummaryWriter(log_dir=str(log_dir))
        self.writer = summary_writer
        self.max_cases, self.num_classes, self.tag = max_cases, num_classes, tag
        self.keys = (image_key, label_key, pred_key)
        self._seen = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._seen = 0

    def __call__(self, engine: Engine) -> None:
        for item in _output_items(engine.state.output):
            if self._seen >= self.max_cases:
                return
            image, label, pred = (item.get(k) for k in self.keys)
            if image is None or label is None or pred is None:
                return
            img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)[0].astype(np.float32)
            lab, prd = _to_label_map(label), _to_label_map(pred)
            if img.ndim == 3:
                k = _slice_through(lab)
                img, lab, prd = img[..., k], lab[..., k], prd[..., k]
            lo, hi = float(img.min()), float(img.max())
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            n = self.num_classes or (label.shape[0] if label.shape[0] > 1 else int(max(lab.max(), prd.max())) + 1)
            scale = max(n - 1, 1)
            panel = np.concatenate([img, lab / scale, prd / scale], axis=1)[None]
            case = case_id_from_path(_source(item, self.keys[0]) or f"case_{self._seen:04d}")
            self.writer.add_image(f"{self.tag}/{case}", np.clip(panel, 0, 1), engine.state.epoch, dataformats="CHW")
            self._seen += 1
        self.writer.flush()

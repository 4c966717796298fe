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
from monai.handlers import from_engine
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.meandice import compute_dice
from monai.metrics.meaniou import compute_iou

from pipeline.data.datalist import case_id
from pipeline.evaluation.cases import normalize_class_names, spacing_of
from pipeline.evaluation.metrics import as_onehot, case_metrics, metric_dtype, write_evaluation
from pipeline.utils.atomic import write_text

__all__ = [
    "CaseMetricsWriter",
    "PerClassMetric",
    "output_items",
    "source_of",
]

logger = logging.getLogger(__name__)


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


def output_items(output: Any) -> list[Mapping[str, Any]]:
    """Decollated items of an engine output: a list of dicts already, or one batched dict to decollate."""
    if isinstance(output, Mapping):
        return list(decollate_batch(dict(output), detach=True))
    return list(output or [])


def source_of(item: Mapping[str, Any], key: str) -> str | None:
    v = item.get(key)
    meta = v.meta if isinstance(v, MetaTensor) else item.get(f"{key}_meta_dict") or {}
    src = meta.get("filename_or_obj")
    if isinstance(src, (list, tuple)):
        src = src[0] if src else None
    return str(src) if src else None


class CaseMetricsWriter:
    """Collect :func:`pipeline.evaluation.metrics.case_metrics` rows over an evaluator run and write the tables.

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
        for item in output_items(engine.state.output):
            self.add_case(item)

    def add_case(self, item: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Score one decollated item; returns its rows."""
        for key in (self.pred_key, self.label_key):
            if key not in item:
                raise KeyError(f"evaluator output has no {key!r} (keys: {sorted(item)}); set pred_key/label_key.")
        pred, label = item[self.pred_key], item[self.label_key]
        src = source_of(item, self.image_key) or source_of(item, self.label_key)
        case = case_id(src, channel_suffix=False) if src else f"case_{len(self.sources):04d}"
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
            "image": source_of(item, self.image_key),
            "label": source_of(item, self.label_key),
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

"""Ignite handler that logs image/label/prediction slices of the first validation cases to TensorBoard."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from pipeline.data.datalist import case_id
from pipeline.handlers.metrics import output_items, source_of

__all__ = ["ValidationImageLogger"]


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
        for item in output_items(engine.state.output):
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
            case = case_id(source_of(item, self.keys[0]) or f"case_{self._seen:04d}", channel_suffix=False)
            self.writer.add_image(f"{self.tag}/{case}", np.clip(panel, 0, 1), engine.state.epoch, dataformats="CHW")
            self._seen += 1
        self.writer.flush()

"""Layer drift: how far each layer moved between two state dicts, as rows, a CSV and a bar chart."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from pipeline.networks.unet import unwrap
from pipeline.utils.atomic import write_text

__all__ = ["LayerDrift", "layer_drift", "plot_drift", "write_drift_csv"]

logger = logging.getLogger(__name__)

_UNUSED_DRIFT = r"^(module\.)?encoder\.(_conv_head|_bn1|_fc)\."
_PathLike = str | os.PathLike


class LayerDrift(NamedTuple):
    """Relative change of one layer: ``||W_after - W_before|| / ||W_before||`` over its weight and bias."""

    layer: str
    rel_change: float


def _state_of(obj: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj


def layer_drift(
    before_state: nn.Module | Mapping[str, torch.Tensor],
    after_state: nn.Module | Mapping[str, torch.Tensor],
    exclude: str | None = _UNUSED_DRIFT,
) -> list[LayerDrift]:
    """Per-layer relative weight change, ordered input -> output (the order of ``after_state``).

    A layer is a key prefix (``encoder.layer1.0.conv1``); its weight and bias are measured together. Norm running
    statistics and keys missing or shaped differently on one side are skipped. A layer whose ``before`` weights
    are all zero gets ``inf`` if it changed, else 0.
    """
    before, after = _state_of(before_state), _state_of(after_state)
    pattern = re.compile(exclude) if exclude else None
    sums: dict[str, list[float]] = {}
    skipped = 0
    for key, a in after.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")) or not a.is_floating_point():
            continue
        if pattern is not None and pattern.search(key):
            continue
        b = before.get(key)
        if b is None or b.shape != a.shape:
            skipped += 1
            continue
        b64, a64 = b.detach().double().cpu(), a.detach().double().cpu()
        acc = sums.setdefault(key.rsplit(".", 1)[0], [0.0, 0.0])
        acc[0] += float((a64 - b64).pow(2).sum())
        acc[1] += float(b64.pow(2).sum())
    if not sums:
        raise ValueError(
            f"layer_drift: no parameter names in common (before has e.g. {list(before)[:3]}, after has "
            f"{list(after)[:3]}). Fix: compare checkpoints of the same network, or align names with align_state_dict."
        )
    if skipped:
        logger.info("layer_drift: %d tensors missing or reshaped on one side were skipped.", skipped)
    rows = []
    for layer, (d2, w2) in sums.items():
        rel = math.sqrt(d2) / math.sqrt(w2) if w2 > 0 else (math.inf if d2 > 0 else 0.0)
        rows.append(LayerDrift(layer, rel))
    return rows


def write_drift_csv(rows: Sequence[LayerDrift], path: _PathLike) -> Path:
    """Write ``order,layer,rel_change`` rows (input -> output) as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["order", "layer", "rel_change"])
    for i, row in enumerate(rows):
        writer.writerow([i, row.layer, f"{row.rel_change:.6g}"])
    return write_text(Path(path), buf.getvalue())


def plot_drift(rows: Sequence[LayerDrift], path: _PathLike, title: str = "Layer drift") -> Path:
    """Bar chart of relative change per layer (input -> output) as PNG (matplotlib Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [r.rel_change if math.isfinite(r.rel_change) else float("nan") for r in rows]
    fig = Figure(figsize=(min(max(6.0, 0.18 * len(rows)), 40.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), values, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r.layer for r in rows], rotation=90, fontsize=5 if len(rows) > 40 else 7)
    ax.set_ylabel("||W_after - W_before|| / ||W_before||")
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path

"""Plausibility of received weights: every floating tensor finite and of a sane magnitude.

NaN/Inf weights give empty masks at inference and a NaN loss (saved as "best") in fine-tuning; ``|w| > 1e6`` is no
trained segmentation network. Both are refused with the tensor's name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_ABS_WEIGHT", "weight_problems"]

MAX_ABS_WEIGHT = 1e6


def weight_problems(state: Mapping[str, Any], max_abs: float = MAX_ABS_WEIGHT) -> list[str]:
    """``"<tensor>: <what>"`` for every floating tensor of ``state`` with NaN/Inf values or ``|w| > max_abs``.

    Nested dicts (a checkpoint around a state dict) are searched too, with dotted names.
    """
    import torch

    tensors: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj: Any, depth: int) -> None:
        if isinstance(obj, torch.Tensor):
            if (obj.is_floating_point() or obj.is_complex()) and obj.numel():
                tensors[prefix] = obj.detach()
        elif isinstance(obj, Mapping) and depth < 4:
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)

    walk("", state, 0)
    if not tensors:
        return []
    with torch.no_grad():  # fast path: one reduction over everything (NaN propagates through max)
        peak = float(torch.cat([t.reshape(-1).abs().to(torch.float32) for t in tensors.values()]).max())
    if math.isfinite(peak) and peak <= max_abs:
        return []
    problems: list[str] = []
    for name, values in tensors.items():
        bad = int((~torch.isfinite(values)).sum())
        if bad:
            problems.append(f"{name}: {bad} NaN/Inf value(s) of {values.numel()}")
        elif (top := float(values.abs().max())) > max_abs:
            problems.append(f"{name}: |w| up to {top:.3g} > {max_abs:.0e} (absurd for trained weights)")
    return problems

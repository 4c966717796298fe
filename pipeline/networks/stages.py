"""Freezing by stage name or regex, and optimizer parameter groups with one learning rate per stage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from pipeline.networks.unet import as_unet

__all__ = ["freeze", "param_groups", "unfreeze"]


# ------------------------------------------------------------------------------------------------ freezing, groups
def freeze(network: nn.Module, stages: str | Iterable[str] | None = None, regex: str | None = None) -> list[str]:
    """Freeze stages (names or ``"encoder"``/``"all"``) and/or parameters whose name matches ``regex``.

    Frozen parameters get ``requires_grad=False``; norm layers whose parameters are all frozen stay in eval mode
    even after ``network.train()``. With neither argument every stage is frozen.

    Returns:
        names of the parameters that changed.
    """
    return as_unet(network).set_trainable(stages, regex=regex, trainable=False)


def unfreeze(network: nn.Module, stages: str | Iterable[str] | None = None, regex: str | None = None) -> list[str]:
    """Inverse of :func:`freeze` (unused EfficientNet parameters stay frozen)."""
    return as_unet(network).set_trainable(stages, regex=regex, trainable=True)


def param_groups(
    network: nn.Module,
    lr: float,
    stage_lr_scale: Mapping[str, float] | None = None,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per stage (input -> output), frozen stages included.

    Every stage has its group from the start, so an optimizer ``state_dict`` saved at any point of a staged
    unfreezing schedule loads into a freshly built optimizer. Each group carries ``name`` (the stage),
    ``lr = lr * scale`` and ``lr_scale``.

    Args:
        network: a PretrainedUNet (optionally DDP-wrapped).
        lr: base learning rate.
        stage_lr_scale: ``{stage or "encoder"/"all": scale}``; specific stages override aliases; default 1.0.
        weight_decay: set on every group when given.
    """
    net = as_unet(network)
    scales = dict.fromkeys(net.stage_names, 1.0)
    items = sorted((stage_lr_scale or {}).items(), key=lambda kv: kv[0] not in ("all", "encoder"))
    for key, scale in items:
        if not isinstance(scale, (int, float)) or scale < 0:
            raise ValueError(f"'stage_lr_scale[{key!r}]' must be a number >= 0, got {scale!r}.")
        for stage in net.expand_stages(key):
            scales[stage] = float(scale)
    groups = []
    for stage in net.stage_names:
        group: dict[str, Any] = {
            "name": stage,
            "params": [p for _, p in net.named_stage_parameters(stage)],
            "lr": lr * scales[stage],
            "lr_scale": scales[stage],
        }
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        groups.append(group)
    return groups

"""Ignite handlers for fine-tuning: staged unfreezing and layer-drift logging.

Design of :class:`StagedUnfreezeHandler` (why it works with checkpoints and DDP):

- The optimizer is built once with **one param group per stage**, frozen stages included
  (``params: "$pipeline.networks.stages.param_groups(@network, @lr)"``). Groups never appear or disappear, so an
  optimizer
  ``state_dict`` saved in any stage loads into a freshly built optimizer.
- A stage transition sets ``requires_grad`` (frozen norm layers also stay in eval mode, see
  :class:`pipeline.networks.unet.PretrainedUNet`) and the LRs: frozen groups get ``lr = 0`` (so even a stale zero
  gradient cannot move them), a group that becomes trainable gets ``lr = base_lr * lr_scale``, groups that were
  already trainable keep their current LR (an LR scheduler or a restored optimizer owns it).
- The active stage is a pure function of ``engine.state.epoch``: it is re-derived on ``STARTED`` (resume) and on every
  ``EPOCH_STARTED``, so every DDP rank switches at the same epoch and a resumed run lands in the right stage whatever
  order the checkpoint loader runs in.
- DDP only all-reduces gradients of parameters that required grad when it was **built**, and by default it
  errors on parameters without gradients. So build DDP on the unfrozen network with
  ``find_unused_parameters=True`` and let the handler freeze; the handler checks both and refuses otherwise (a
  parameter unfrozen later without all-reduce would silently diverge across ranks).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.handlers.drift import DriftHandler  # noqa: F401 split
from pipeline.handlers.progress import ProgressBar  # noqa: F401 split
from pipeline.networks.unet import UNUSED_STAGE, as_unet

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["StagedUnfreezeHandler", "default_stages"]

logger = logging.getLogger(__name__)

_STAGE_KEYS = {"epoch", "trainable", "lr_scale"}


def default_stages(network: nn.Module) -> list[dict[str, Any]]:
    """decoder + head from epoch 0, the deepest encoder stage from epoch 3 (LR x 0.1), the whole encoder from 6."""
    deepest = as_unet(network).encoder_stage_names[-1]
    return [
        {"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0},
        {"epoch": 3, "trainable": [deepest], "lr_scale": 0.1},
        {"epoch": 6, "trainable": ["encoder"], "lr_scale": 0.01},
    ]


class StagedUnfreezeHandler:
    """Unfreeze a PretrainedUNet stage by stage on a schedule, with a per-stage LR scale.

    Args:
        network: the PretrainedUNet being trained (optionally DDP-wrapped).
        optimizer: built with ``params=pipeline.networks.stages.param_groups(network, lr)`` (one named group per stage).
        stages: ``[{"epoch": e, "trainable": [stage or "encoder"/"all", ...], "lr_scale": s}, ...]``. ``epoch`` counts
            completed epochs (0 = from the start), strictly increasing, the first one 0. Trainable sets accumulate;
            a stage keeps the ``lr_scale`` of the entry that first made it trainable. Default: :func:`default_stages`.
        warmup_iterations: ramp the LR of newly trainable groups linearly from 0 over this many iterations.
        lr: base LR; default ``optimizer.defaults["lr"]``.
        summary_writer: optional TensorBoard ``SummaryWriter``; LRs go to ``lr/<group>`` and the stage to
            ``unfreeze/stage`` every epoch.
        log_to_metrics: also put those values into ``engine.state.metrics`` (TensorBoardStatsHandler shows them).
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        stages: Sequence[Mapping[str, Any]] | None = None,
        warmup_iterations: int = 0,
        lr: float | None = None,
        summary_writer: Any = None,
        log_to_metrics: bool = True,
    ) -> None:
        self.net = as_unet(network)
        self._check_ddp(network)
        self.optimizer = optimizer
        self.stages = self._validate_stages(default_stages(network) if stages is None else stages)
        if isinstance(warmup_iterations, bool) or not isinstance(warmup_iterations, int) or warmup_iterations < 0:
            raise ValueError(f"'warmup_iterations' must be an integer >= 0, got {warmup_iterations!r}.")
        self.warmup_iterations = warmup_iterations
        self.base_lr = float(optimizer.defaults.get("lr", 0.0) if lr is None else lr)
        if not self.base_lr > 0:
            raise ValueError(f"'lr' must be > 0 (default: the optimizer's lr), got {self.base_lr!r}.")
        self._validate_groups(optimizer)
        self.summary_writer = summary_writer
        self.log_to_metrics = log_to_metrics
        self.stage_index = -1
        self.active: dict[str, float] = {}  # trainable stage -> lr_scale
        self._warming: dict[str, tuple[int, float]] = {}  # stage -> (start iteration, target lr)

    # ------------------------------------------------------------------------------------------- validation
    def _validate_stages(self, stages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        if isinstance(stages, (str, Mapping)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError(
                f"'stages' must be a non-empty list of {{epoch, trainable, lr_scale}} dicts, got {stages!r}."
            )
        out: list[dict[str, Any]] = []
        for i, st in enumerate(stages):
            if not isinstance(st, Mapping) or not set(st) <= _STAGE_KEYS or not {"epoch", "trainable"} <= set(st):
                raise ValueError(
                    f"'stages[{i}]' must be a dict with keys 'epoch', 'trainable' and optional 'lr_scale', got {st!r}."
                )
            epoch, trainable, scale = st["epoch"], st["trainable"], st.get("lr_scale", 1.0)
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"'stages[{i}].epoch' must be an integer >= 0, got {epoch!r}.")
            if out and epoch <= out[-1]["epoch"]:
                raise ValueError(
                    f"'stages[{i}].epoch' must be greater than the previous entry's ({out[-1]['epoch']}), got {epoch}. "
                    "Fix: list the stages in increasing epoch order."
                )
            if not out and epoch != 0:
                raise ValueError(f"'stages[0].epoch' must be 0 (something must train from the start), got {epoch}.")
            names = [trainable] if isinstance(trainable, str) else list(trainable)
            if not names:
                raise ValueError(f"'stages[{i}].trainable' must name at least one stage, got {trainable!r}.")
            try:
                self.net.expand_stages(names)
            except ValueError as e:
                raise ValueError(f"'stages[{i}].trainable': {e}") from None
            if (
                isinstance(scale, bool)
                or not isinstance(scale, (int, float))
                or not (scale > 0 and math.isfinite(scale))
            ):
                raise ValueError(f"'stages[{i}].lr_scale' must be a number > 0, got {scale!r}.")
            out.append({"epoch": epoch, "trainable": names, "lr_scale": float(scale)})
        return out

    @property
    def groups(self) -> dict[str, dict[str, Any]]:
        """Stage -> optimizer param group, looked up on each use (``optimizer.load_state_dict`` replaces the dicts)."""
        return {g["name"]: g for g in self.optimizer.param_groups if g.get("name") in self.net.stage_names}

    def _validate_groups(self, optimizer: torch.optim.Optimizer) -> None:
        groups = {g.get("name"): g for g in optimizer.param_groups}
        fix = "Fix: build the optimizer with params=pipeline.networks.stages.param_groups(network, lr)."
        for stage in self.net.stage_names:
            if stage not in groups:
                raise ValueError(
                    f"optimizer has no param group named {stage!r}; expected one group per stage "
                    f"{list(self.net.stage_names)}, got names {[g.get('name') for g in optimizer.param_groups]}. {fix}"
                )
            want = {id(p) for _, p in self.net.named_stage_parameters(stage)}
            if {id(p) for p in groups[stage]["params"]} != want:
                raise ValueError(f"optimizer param group {stage!r} does not hold exactly the {stage} parameters. {fix}")

    def _check_ddp(self, network: nn.Module) -> None:
        if not isinstance(network, nn.parallel.DistributedDataParallel):
            return
        if not network.find_unused_parameters:
            raise ValueError(
                "DistributedDataParallel was built with find_unused_parameters=False, but frozen stages produce no "
                "gradients. Fix: DistributedDataParallel(network, find_unused_parameters=True)."
            )
        frozen = [
            n for n, p in self.net.named_parameters() if not p.requires_grad and self.net.stage_of(n) != UNUSED_STAGE
        ]
        if frozen:
            raise ValueError(
                f"DistributedDataParallel only synchronises parameters that required grad when it was built; "
                f"{len(frozen)} were already frozen (e.g. {frozen[:3]}), so unfreezing them later would let ranks "
                "diverge. Fix: wrap the unfrozen network in DDP and let this handler do the freezing."
            )

    # ------------------------------------------------------------------------------------------- schedule
    def stage_for_epoch(self, completed_epochs: int) -> int:
        """Index of the schedule entry active after ``completed_epochs`` epochs."""
        return max(i for i, st in enumerate(self.stages) if st["epoch"] <= completed_epochs)

    def _trainable(self, index: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for st in self.stages[: index + 1]:
            for stage in self.net.expand_stages(st["trainable"]):
                out.setdefault(stage, st["lr_scale"])
        return out

    def _set_requires_grad(self, trainable: Mapping[str, float]) -> None:
        frozen = [s for s in self.net.stage_names if s not in trainable]
        self.net.set_trainable(frozen, trainable=False)
        self.net.set_trainable(list(trainable), trainable=True)

    def apply(self, index: int, iteration: int = 0, logger_: logging.Logger | None = None) -> None:
        """Make schedule entry ``index`` active: requires_grad, norm modes and LRs (see the module docstring)."""
        trainable = self._trainable(index)
        self._set_requires_grad(trainable)
        for stage, group in self.groups.items():
            if stage not in trainable:
                group["lr"], group["lr_scale"] = 0.0, 0.0
                self._warming.pop(stage, None)
            elif stage not in self.active:
                target = self.base_lr * trainable[stage]
                group["lr_scale"] = trainable[stage]
                if self.warmup_iterations:
                    self._warming[stage] = (iteration, target)
                    group["lr"] = 0.0
                else:
                    group["lr"] = target
        self.active, self.stage_index = trainable, index
        log = logger_ or logger
        log.info(
            "Staged unfreezing: entry %d (from epoch %d): trainable %s, frozen %s; lr %s",
            index,
            self.stages[index]["epoch"],
            list(trainable),
            [s for s in self.net.stage_names if s not in trainable],
            {s: f"{g['lr']:.3g}" for s, g in self.groups.items()},
        )

    # ------------------------------------------------------------------------------------------- ignite
    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._on_epoch, True)
        engine.add_event_handler(Events.EPOCH_STARTED, self._on_epoch, False)
        if self.warmup_iterations:
            engine.add_event_handler(Events.ITERATION_STARTED, self._on_iteration)

    def _on_epoch(self, engine: Engine, started: bool) -> None:
        completed = engine.state.epoch if started else engine.state.epoch - 1
        unreachable = [st["epoch"] for st in self.stages if st["epoch"] >= (engine.state.max_epochs or 0)]
        if started and unreachable:
            engine.logger.warning(
                "Staged unfreezing: entries from epochs %s are never reached with max_epochs=%s.",
                unreachable,
                engine.state.max_epochs,
            )
        index = self.stage_for_epoch(completed)
        if index != self.stage_index:
            self.apply(index, engine.state.iteration, engine.logger)
        lrs = {f"lr/{s}": float(g["lr"]) for s, g in self.groups.items()}
        if self.log_to_metrics:
            engine.state.metrics.update({**lrs, "unfreeze/stage": float(index)})
        if self.summary_writer is not None and not started:
            for tag, value in {**lrs, "unfreeze/stage": float(index)}.items():
                self.summary_writer.add_scalar(tag, value, engine.state.epoch)

    def _on_iteration(self, engine: Engine) -> None:
        for stage, (start, target) in list(self._warming.items()):
            step = engine.state.iteration - start  # 1 on the first iteration after the transition
            self.groups[stage]["lr"] = target * min(1.0, step / self.warmup_iterations)
            if step >= self.warmup_iterations:
                del self._warming[stage]

    def state_dict(self) -> dict[str, Any]:
        return {"stage_index": self.stage_index, "active": dict(self.active)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the active entry and re-apply its freeze state (LRs come from the restored optimizer)."""
        index = int(state["stage_index"])
        if not -1 <= index < len(self.stages):
            raise ValueError(f"'stage_index' must be in [-1, {len(self.stages) - 1}] for this schedule, got {index}.")
        self.stage_index, self.active = index, {str(k): float(v) for k, v in state.get("active", {}).items()}
        if index >= 0:
            self._set_requires_grad(self._trainable(index))

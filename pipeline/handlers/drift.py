"""Ignite handler that records how far each layer moved from the pretrained weights (CSV + plot per epoch)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from pipeline.networks.drift import layer_drift, plot_drift, write_drift_csv
from pipeline.networks.unet import as_unet
from pipeline.networks.weights import LoadReport

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["DriftHandler"]

logger = logging.getLogger(__name__)


class DriftHandler:
    """Log per-layer drift ``||W - W_ref|| / ||W_ref||`` (see :func:`pipeline.networks.drift.layer_drift`).

    Args:
        network: the network being trained (optionally DDP-wrapped).
        reference_state: a :class:`~pipeline.networks.weights.LoadReport` (its aligned reference), a state dict,
            a module, or None: the report of the weights loaded into ``network`` (``network.load_report``, set by
            :func:`pipeline.networks.weights.load_pretrained`), else a snapshot at ``STARTED``. Weights are never
            read from a path here: the one read is :func:`~pipeline.networks.weights.load_pretrained`'s.
        summary_writer: optional TensorBoard ``SummaryWriter``: ``drift/<layer>`` and ``drift_stage/<stage>``.
        every_n_epochs: log every N epochs.
        output_dir: when given, ``drift.csv`` and ``drift.png`` are written there at ``COMPLETED``.
    """

    def __init__(
        self,
        network: nn.Module,
        reference_state: LoadReport | Mapping[str, torch.Tensor] | nn.Module | None = None,
        summary_writer: Any = None,
        every_n_epochs: int = 1,
        output_dir: str | Path | None = None,
    ) -> None:
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"'every_n_epochs' must be an integer >= 1, got {every_n_epochs!r}.")
        self.network, self.net = network, as_unet(network)
        self.summary_writer, self.every_n_epochs = summary_writer, every_n_epochs
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.reference: dict[str, torch.Tensor] | None = None
        if isinstance(reference_state, (str, Path)):
            raise TypeError(
                f"'reference_state' must be a LoadReport, a state dict, a module or None, got the path "
                f"{str(reference_state)!r}. Fix: load the weights with pipeline.networks.weights.load_pretrained "
                "(the bundles' 'pretrained' id) and leave reference_state unset: the loaded weights are the reference."
            )
        if reference_state is None:
            reference_state = self.net.load_report
        if isinstance(reference_state, LoadReport):
            self.reference = {k: v.clone() for k, v in reference_state.reference.items()}
        elif reference_state is not None:
            self.reference = self._snapshot(reference_state)

    @staticmethod
    def _snapshot(obj: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
        state = obj.state_dict() if isinstance(obj, nn.Module) else obj
        return {k.removeprefix("module."): v.detach().cpu().clone() for k, v in copy.copy(state).items()}

    def attach(self, engine: Engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every_n_epochs), self._on_epoch)
        if self.output_dir is not None:
            engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_started(self, engine: Engine) -> None:
        if self.reference is None:
            self.reference = self._snapshot(self.net)

    def compute(self) -> list[Any]:
        if self.reference is None:
            self.reference = self._snapshot(self.net)
        return layer_drift(self.reference, self.net.state_dict())

    def _on_epoch(self, engine: Engine) -> None:
        rows = self.compute()
        per_stage: dict[str, list[float]] = {}
        for row in rows:
            if math.isfinite(row.rel_change):
                per_stage.setdefault(self.net.stage_of(row.layer + ".x"), []).append(row.rel_change)
        if self.summary_writer is not None:
            for row in rows:
                self.summary_writer.add_scalar(f"drift/{row.layer}", row.rel_change, engine.state.epoch)
            for stage, values in per_stage.items():
                self.summary_writer.add_scalar(f"drift_stage/{stage}", sum(values) / len(values), engine.state.epoch)
        top = sorted(rows, key=lambda r: r.rel_change, reverse=True)[:3]
        engine.logger.info(
            "Layer drift (epoch %d), top: %s", engine.state.epoch, [(r.layer, f"{r.rel_change:.3g}") for r in top]
        )

    def _on_completed(self, engine: Engine) -> None:
        assert self.output_dir is not None
        rows = self.compute()
        write_drift_csv(rows, self.output_dir / "drift.csv")
        plot_drift(rows, self.output_dir / "drift.png")

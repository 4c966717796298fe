"""Reproducibility: the 3D bundle run in-process (ConfigWorkflow, as ``python -m monai.bundle run training`` does)
gives identical per-iteration losses for the same seed, a resumed run continues with exactly the losses of the
uninterrupted one (all RNG states restored), and the seed is recorded in ``runs/run_info.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow
from monai.handlers import from_engine

from tests.conftest import BUNDLE_3D

CONFIGS = BUNDLE_3D / "configs"
TINY = {"patch_size": [32, 32, 32], "pixdim": [3.0, 3.0, 4.0], "num_samples": 2, "batch_size": 1, "sw_batch_size": 1}


class LossRecorder:
    def __init__(self) -> None:
        self.losses: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)

    def _record(self, engine: Engine) -> None:
        self.losses.append(float(from_engine(["loss"], first=True)(engine.state.output)))


def train(root: Path, dataset: Path, max_epochs: int, seed: int = 0, resume: bool = False) -> list[float]:
    """One bundle training run; returns the loss of every iteration it ran."""
    recorder = LossRecorder()
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=None,
        run_id="training",
        bundle_root=str(root),
        dataset_dir=str(dataset),
        max_epochs=max_epochs,
        val_interval=100,  # no validation: losses only
        seed=seed,
        resume=resume,
        **{"train#extra_handlers": {"recorder": recorder}},
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    return recorder.losses


@pytest.fixture(scope="module")
def two_epochs(tiny_dataset_3d, tmp_path_factory) -> tuple[Path, list[float]]:
    root = tmp_path_factory.mktemp("repro") / "a"
    return root, train(root, tiny_dataset_3d, max_epochs=2)


def test_same_seed_same_losses(two_epochs, tiny_dataset_3d, tmp_path):
    _, losses_a = two_epochs
    losses_b = train(tmp_path / "b", tiny_dataset_3d, max_epochs=1)
    assert len(losses_a) == 6 and len(losses_b) == 3
    assert losses_b == pytest.approx(losses_a[:3], abs=1e-6)


def test_resumed_run_continues_with_the_same_losses(two_epochs, tiny_dataset_3d, tmp_path):
    root_a, losses_a = two_epochs
    (tmp_path / "models").mkdir()
    for name in ("checkpoint_epoch=1.pt",):  # the state after epoch 1, as if the run had died in epoch 2
        (tmp_path / "models" / name).write_bytes((root_a / "models" / name).read_bytes())
    resumed = train(tmp_path, tiny_dataset_3d, max_epochs=2, resume=True)
    assert resumed == pytest.approx(losses_a[3:], abs=1e-6)


def test_seed_and_versions_are_recorded(two_epochs):
    root, _ = two_epochs
    info = json.loads((root / "runs" / "run_info.json").read_text())
    assert info["seed"] == 0 and info["resumed_from"] is None and info["start_epoch"] == 0
    assert {"python", "torch", "monai", "numpy", "pytorch-ignite"} <= set(info["versions"])

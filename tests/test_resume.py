"""Crash-safe training: epoch checkpoints, graceful SIGTERM, resume from the latest valid checkpoint (skipping a
truncated one), best-model record and staged-unfreezing state survive a resume, SIGKILL mid-run of a real bundle."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from pipeline.bundle.config import open_bundle
from pipeline.handlers.checkpoint import BestModelSaver, TrainingCheckpointer
from pipeline.handlers.checkpoint_files import CheckpointError, atomic_save, list_checkpoints, load_checkpoint
from tests.conftest import BUNDLE_3D

CONFIGS = BUNDLE_3D / "configs"
DATA = [torch.linspace(-1, 1, 12).reshape(4, 3) * k for k in (1.0, 2.0, 3.0)]  # 3 iterations per epoch
SCORES = {1: 0.5, 2: 0.9, 3: 0.7, 4: 0.8}  # validation score after each epoch: best at epoch 2


class Counter:
    """A stateful handler (like StagedUnfreezeHandler): counts epochs, survives a resume."""

    def __init__(self) -> None:
        self.epochs = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: setattr(self, "epochs", self.epochs + 1))

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = state["epochs"]


def make_run(ckpt_dir: Path, resume: bool = False, crash_at_epoch: int | None = None, **kwargs):
    """A bare trainer + evaluator wired like the bundle: checkpointer first, then validation, best-model saver."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=0.05)

    def step(engine, x):
        opt.zero_grad()
        loss = net(x).pow(2).mean() + 0.01 * torch.rand(()).item()
        loss.backward()
        opt.step()
        return loss.item()

    trainer, evaluator, counter = Engine(step), Engine(lambda e, b: None), Counter()
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = -1.0, -1

    evaluator.history = []  # epochs validated by this run

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(e):  # what MONAI's evaluator does with its key metric, run by ValidationHandler at the trainer's epoch
        e.state.epoch = trainer.state.epoch
        e.history.append(trainer.state.epoch)
        e.state.metrics = {"acc": SCORES[trainer.state.epoch]}
        if e.state.metrics["acc"] > e.state.best_metric:
            e.state.best_metric, e.state.best_metric_epoch = e.state.metrics["acc"], trainer.state.epoch

    evaluator.state.key_metric_name = "acc"
    BestModelSaver(net, ckpt_dir, "model.pt").attach(evaluator)
    kwargs.setdefault("validate", lambda epoch: evaluator.run([0]))  # as ValidationHandler runs a MONAI evaluator
    ckpt = TrainingCheckpointer(
        ckpt_dir, net, opt, evaluator=evaluator, to_save={"counter": counter}, resume=resume, **kwargs
    )
    ckpt.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    counter.attach(trainer)
    if crash_at_epoch is not None:

        @trainer.on(Events.EPOCH_STARTED(once=crash_at_epoch))
        def crash(_):
            raise RuntimeError("simulated crash")

    return trainer, evaluator, counter, ckpt


def test_epoch_checkpoints_are_atomic_pruned_and_weights_only(tmp_path):
    trainer, evaluator, counter, _ = make_run(tmp_path, keep_last=2, seed=7)
    trainer.run(DATA, max_epochs=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_epoch=2.pt", "checkpoint_epoch=3.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    ckpt = load_checkpoint(tmp_path / "checkpoint_epoch=3.pt")  # torch.load(weights_only=True) inside
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["seed"], ckpt["reason"]) == (3, 9, 7, "epoch")
    assert ckpt["to_save"] == {"counter": {"epochs": 3}}
    assert ckpt["evaluator"] == [0.9, 2]  # saved after validation of epoch 3 (the checkpoint runs last)
    assert {"python", "numpy", "torch"} <= set(ckpt["rng"])


def test_every_n_epochs_saves_on_the_interval_and_after_the_last_epoch(tmp_path):
    trainer, *_ = make_run(tmp_path, keep_last=10, every_n_epochs=3)
    trainer.run(DATA, max_epochs=4)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]
    assert load_checkpoint(tmp_path / "checkpoint_epoch=4.pt")["reason"] == "completed"


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path):
    make_run(tmp_path)[0].run(DATA, max_epochs=1)
    with pytest.raises(CheckpointError, match=r"already holds checkpoints of an earlier run \(checkpoint_epoch=1.pt\)"):
        make_run(tmp_path)


def test_best_model_is_not_overwritten_by_a_worse_one_after_resume(tmp_path):
    trainer, *_ = make_run(tmp_path, crash_at_epoch=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.run(DATA, max_epochs=4)
    best = (tmp_path / "model.pt").read_bytes()  # epoch 2, score 0.9
    trainer, evaluator, counter, ckpt = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=4)  # epochs 3 and 4 score 0.7 and 0.8: worse
    assert ckpt.resumed_from == tmp_path / "checkpoint_epoch=2.pt"
    assert (trainer.state.epoch, trainer.state.iteration, counter.epochs) == (4, 12, 4)
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.9, 2)
    assert (tmp_path / "model.pt").read_bytes() == best


def test_sigterm_stops_after_the_iteration_saves_and_resumes(tmp_path):
    trainer, *_ = make_run(tmp_path)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda _: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as info:
        trainer.run(DATA, max_epochs=4)
    assert info.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    interrupt = load_checkpoint(tmp_path / "checkpoint_epoch=1_iteration=5.pt")
    assert (interrupt["reason"], interrupt["iteration"]) == ("SIGTERM", 5)
    trainer, evaluator, counter, _ = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=4)
    assert (trainer.state.epoch, trainer.state.iteration, counter.epochs) == (4, 12, 4)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_epoch=3.pt", "checkpoint_epoch=4.pt"]


def test_keyboard_interrupt_saves_a_checkpoint_and_reraises(tmp_path):
    trainer, *_ = make_run(tmp_path, handle_signals=False)

    @trainer.on(Events.ITERATION_COMPLETED(once=4))
    def interrupt(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.run(DATA, max_epochs=3)
    assert load_checkpoint(tmp_path / "checkpoint_epoch=1_iteration=4.pt")["reason"] == "KeyboardInterrupt"


def test_truncated_latest_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    make_run(tmp_path)[0].run(DATA, max_epochs=2)
    latest = tmp_path / "checkpoint_epoch=2.pt"
    latest.write_bytes(latest.read_bytes()[:5000])  # killed while copying / a torn write
    trainer, _, counter, ckpt = make_run(tmp_path, resume=True)
    with caplog.at_level(logging.WARNING):
        trainer.run(DATA, max_epochs=3)
    assert "skipping checkpoint checkpoint_epoch=2.pt" in caplog.text and "truncated" in caplog.text
    assert ckpt.resumed_from == tmp_path / "checkpoint_epoch=1.pt"
    assert (trainer.state.epoch, trainer.state.iteration, counter.epochs) == (3, 9, 3)


def test_finetune_unfreeze_stage_is_saved_and_restored(tiny_dataset_3d, tmp_path):
    from pipeline.networks.unet import PretrainedUNet

    pretrained = tmp_path / "pretrained.pt"
    torch.save(PretrainedUNet(3, 1, 4, "resnet10").state_dict(), pretrained)

    def build(resume: bool):
        overrides = {"pretrained": str(pretrained), "cache_rate": 0.0, "resume": resume}
        parser = open_bundle(BUNDLE_3D, ("train.json", "finetune.json"), overrides, tiny_dataset_3d)
        parser["bundle_root"] = str(tmp_path)
        return [parser.get_parsed_content(k) for k in ("train#trainer", "checkpointer", "unfreeze_handler")]

    trainer, ckpt, unfreeze = build(False)
    assert ckpt.to_save == {"unfreeze": unfreeze}  # named in finetune.json (checkpointer#to_save#unfreeze)
    unfreeze.apply(1)  # layer4 trainable at lr x 0.1, stem..layer3 frozen
    trainer.state.iteration = 3 * trainer.state.epoch_length
    path = atomic_save(ckpt.checkpoint(trainer), tmp_path / "models" / "checkpoint_epoch=3.pt")
    lrs = [g["lr"] for g in ckpt.optimizer.param_groups]

    trainer2, ckpt2, unfreeze2 = build(True)
    assert unfreeze2.stage_index == -1 and all(p.requires_grad for p in ckpt2.network.parameters())
    ckpt2.restore(trainer2, load_checkpoint(path))
    assert unfreeze2.stage_index == 1 and trainer2.state.epoch == 3
    net = ckpt2.network
    assert not any(p.requires_grad for _, p in net.named_stage_parameters("layer3"))
    assert all(p.requires_grad for _, p in net.named_stage_parameters("layer4"))
    assert [g["lr"] for g in ckpt2.optimizer.param_groups] == lrs


TINY = ["--patch_size", "[32,32,32]", "--pixdim", "[3.0,3.0,4.0]", "--num_samples", "2", "--batch_size", "1"]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_completes(tiny_dataset_3d, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE_3D, root, ignore=shutil.ignore_patterns("models", "runs"))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    cmd += ["--bundle_root", str(root), "--dataset_dir", str(tiny_dataset_3d), "--max_epochs", "3"]
    cmd += ["--val_interval", "1", "--sw_batch_size", "1", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    models, logs = root / "models", [tmp_path / "run1.log", tmp_path / "run2.log"]
    with open(logs[0], "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 400
        while not (models / "checkpoint_epoch=1.pt").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint within 400 s"
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no handler runs, like a preempted machine
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, logs[0].read_text()[-3000:]
    killed_at = list_checkpoints(models)[-1]
    epoch = load_checkpoint(killed_at)["epoch"]  # (the resumed run prunes it later: keep_last=2)

    with open(logs[1], "w") as log:
        rc = subprocess.run([*cmd, "--resume", "True"], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    out = logs[1].read_text()
    assert rc == 0, out[-3000:]
    assert f"Resumed from {killed_at}: epoch {epoch}," in out
    final = load_checkpoint(list_checkpoints(models)[-1])
    assert (final["epoch"], final["iteration"]) == (3, 3 * final["trainer"]["epoch_length"])
    assert "Epoch[3] Complete" in out and "Epoch[1] Complete" not in out
    state = torch.load(models / "model.pt", weights_only=True)
    assert any(k.startswith("segmentation_head") for k in state)
    # the best metric survives the resume: the last report names the best value of all epochs of both runs
    both = logs[0].read_text() + out
    scores = {int(e): float(v) for e, v in re.findall(r"Epoch\[(\d)\] Metrics -- .*?val_mean_dice: ([0-9.]+)", both)}
    best, best_epoch = re.findall(r"val_mean_dice best value: ([0-9.e-]+) at epoch: (\d+)", out)[-1]
    assert sorted(scores) == [1, 2, 3] and float(best) == pytest.approx(max(scores.values()), abs=1e-4)
    assert int(best_epoch) == min(e for e, v in scores.items() if v == pytest.approx(float(best), abs=1e-4))
    info = json.loads((root / "runs" / "run_info.json").read_text())
    assert info["resumed_from"] == str(killed_at) and info["seed"] == 0 and len(info["history"]) == 1

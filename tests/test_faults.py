"""Fault injection (issue 18, "nothing lost, ever"): a killed write, a signal during validation, corrupt checkpoints,
two inference runs on one folder, an unusable output folder, bad predictions. Each test asserts that nothing loaded
is corrupt, the run resumes or stops with one line naming the file, and no file is lost or overwritten."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events

from pipeline.handlers.checkpoint import CheckpointSettingError, TrainingCheckpointer
from pipeline.handlers.checkpoint_files import CheckpointError, list_checkpoints, load_checkpoint, remove_stale_temps
from pipeline.utils.atomic import atomic_path
from tests.test_resume import DATA, make_run


def _one_line(text: str) -> str:
    assert "\n" not in text.strip(), text
    return text


# ------------------------------------------------------------------------------------------------ training
def test_missing_best_model_does_not_block_resume_and_is_written_at_the_next_best(tmp_path):
    trainer, *_ = make_run(tmp_path, crash_at_epoch=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.run(DATA, max_epochs=4)
    (tmp_path / "model.pt").unlink()  # the user deleted it (or it never got copied)
    trainer, evaluator, _, ckpt = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=4)  # epoch 2 scores 0.9: a new best
    assert ckpt.resumed_from == tmp_path / "checkpoint_epoch=1.pt"
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.9, 2)
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(best) == {"weight", "bias"}


def test_interrupt_while_writing_the_best_model_keeps_the_previous_one(tmp_path, monkeypatch):
    import pipeline.handlers.checkpoint_files as files

    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):
        if Path(f.name).name.startswith(".model.pt") and trainer.state.epoch == 2:
            f.write(b"PK\x03\x04 half a zip")  # killed mid-write
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    trainer, *_ = make_run(tmp_path, handle_signals=False)
    before = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: before.update(
        best=(tmp_path / "model.pt").read_bytes()))  # fmt: skip
    monkeypatch.setattr(files.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(DATA, max_epochs=3)
    assert (tmp_path / "model.pt").read_bytes() == before["best"]  # the epoch-1 best, whole
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["validation_pending"] is True

    monkeypatch.setattr(files.torch, "save", real_save)
    trainer, evaluator, _, ckpt = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=3)
    assert evaluator.history == [2, 3] and evaluator.state.best_metric_epoch == 2
    assert (tmp_path / "model.pt").read_bytes() != before["best"]


def test_stale_temps_of_killed_writes_are_removed_on_resume(tmp_path):
    make_run(tmp_path)[0].run(DATA, max_epochs=1)
    # a SIGKILL inside atomic_path leaves its temp file behind: make real ones the same way
    for name in ("checkpoint_epoch=2.pt", "checkpoint_epoch=2_iteration=5.pt", "model.pt"):
        ctx = atomic_path(tmp_path / name)
        tmp = ctx.__enter__()
        tmp.write_bytes(b"x" * 100)
        os.link(tmp, tmp.with_name(tmp.name + "-copy"))  # keep a copy under another name...
        ctx.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None)  # ... as the interrupted write removes its own
        os.rename(tmp.with_name(tmp.name + "-copy"), tmp)
    old_style = tmp_path / ".checkpoint_epoch=3.pt.tmp"
    old_style.write_bytes(b"x")
    other = tmp_path / ".notes.tmp-abc"  # not ours: kept
    other.write_text("mine")
    stale = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p != other)
    assert len(stale) == 4 and all(".tmp" in n for n in stale)
    assert any(n.startswith(".checkpoint_epoch=2.pt.tmp-") for n in stale)

    trainer, *_ = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".notes.tmp-abc"]
    assert remove_stale_temps(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_validation_validates_that_epoch_after_resume(tmp_path, signum):
    trainer, evaluator, *_ = make_run(tmp_path)

    @evaluator.on(Events.ITERATION_STARTED)
    def kill(_):
        if trainer.state.epoch == 2:  # the best epoch (0.9): its validation is cut short
            os.kill(os.getpid(), signum)

    with pytest.raises(SystemExit) as info:
        trainer.run(DATA, max_epochs=4)
    assert info.value.code == 128 + signum
    assert evaluator.history == [1]  # epoch 2 was not scored
    saved = load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")
    assert saved["validation_pending"] is True and saved["evaluator"] == [0.5, 1]
    first_best = (tmp_path / "model.pt").read_bytes()

    trainer, evaluator, counter, ckpt = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=4)
    assert ckpt.resumed_from == tmp_path / "checkpoint_epoch=2.pt"
    assert evaluator.history == [2, 3, 4]  # no hole in the metric history
    assert (evaluator.state.best_metric, evaluator.state.best_metric_epoch) == (0.9, 2)  # the best is not missed
    assert (tmp_path / "model.pt").read_bytes() != first_best
    best = torch.load(tmp_path / "model.pt", weights_only=True)
    epoch2 = load_checkpoint(tmp_path / "checkpoint_epoch=3.pt")  # pruned epoch 2; epoch 3 has the same best record
    assert epoch2["evaluator"] == [0.9, 2] and set(best) == {"weight", "bias"}
    assert (trainer.state.epoch, counter.epochs) == (4, 4)


def test_signal_during_training_iterations_needs_no_validation_again(tmp_path):
    trainer, evaluator, *_ = make_run(tmp_path)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda _: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit):
        trainer.run(DATA, max_epochs=4)
    assert load_checkpoint(tmp_path / "checkpoint_epoch=1_iteration=5.pt")["validation_pending"] is False
    trainer, evaluator, *_ = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=3)
    assert evaluator.history == [2, 3]


def test_signal_in_the_last_iteration_validates_that_epoch_after_resume(tmp_path):
    trainer, evaluator, *_ = make_run(tmp_path)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=6), lambda _: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit):
        trainer.run(DATA, max_epochs=4)
    assert evaluator.history == [1]  # epoch 2's training finished, its EPOCH_COMPLETED never ran
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["validation_pending"] is True
    trainer, evaluator, *_ = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=3)
    assert evaluator.history == [2, 3]


def test_keyboard_interrupt_during_validation_validates_that_epoch_after_resume(tmp_path):
    trainer, evaluator, *_ = make_run(tmp_path, handle_signals=False)

    @evaluator.on(Events.ITERATION_STARTED)
    def interrupt(_):
        if trainer.state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trainer.run(DATA, max_epochs=3)
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["validation_pending"] is True
    trainer, evaluator, *_ = make_run(tmp_path, resume=True)
    trainer.run(DATA, max_epochs=3)
    assert evaluator.history == [2, 3] and evaluator.state.best_metric_epoch == 2


def test_a_monai_evaluator_is_run_again_for_the_pending_epoch_by_default(tmp_path, monkeypatch):
    from monai.engines import SupervisedEvaluator

    net = torch.nn.Linear(3, 1)
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=[], network=net)
    calls = []
    monkeypatch.setattr(evaluator, "run", lambda epoch: calls.append(epoch))
    ckpt = TrainingCheckpointer(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), evaluator=evaluator)
    trainer = make_run(tmp_path / "other")[0]
    trainer.state.epoch, trainer.state.iteration, trainer.state.epoch_length = 2, 6, 3
    ckpt._validate_again(trainer, tmp_path / "checkpoint_epoch=2.pt")
    assert calls == [2]  # what MONAI's ValidationHandler calls: evaluator.run(global_epoch)
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["reason"] == "validated"


def test_all_checkpoints_corrupt_refuses_to_restart_and_keeps_them(tmp_path, caplog):
    make_run(tmp_path, keep_last=2)[0].run(DATA, max_epochs=2)
    originals = {}
    for path in list_checkpoints(tmp_path):
        path.write_bytes(path.read_bytes()[:3000])  # torn copies
        originals[path.name] = path.read_bytes()
    trainer, *_ = make_run(tmp_path, resume=True)
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointError) as info:
        trainer.run(DATA, max_epochs=4)
    msg = _one_line(str(info.value))
    assert "no checkpoint in" in msg and "checkpoint_epoch=1.pt" in msg and "checkpoint_epoch=2.pt" in msg
    assert f"moved the unloadable ones to {tmp_path / 'corrupt'}" in msg and "--resume False" in msg
    assert "continue with --resume True" not in caplog.text  # advice that would fail the same way
    assert list_checkpoints(tmp_path) == []
    assert {p.name: p.read_bytes() for p in (tmp_path / "corrupt").iterdir()} == originals  # moved, not deleted

    trainer, *_ = make_run(tmp_path)  # starting over is allowed now, and never touches the corrupt files
    trainer.run(DATA, max_epochs=2)
    assert {p.name: p.read_bytes() for p in (tmp_path / "corrupt").iterdir()} == originals


def test_a_corrupt_newest_checkpoint_is_moved_aside_not_overwritten(tmp_path):
    make_run(tmp_path, keep_last=3)[0].run(DATA, max_epochs=2)
    torn = (tmp_path / "checkpoint_epoch=2.pt").read_bytes()[:3000]
    (tmp_path / "checkpoint_epoch=2.pt").write_bytes(torn)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint_epoch=2.pt").write_bytes(b"an older one")
    trainer, _, _, ckpt = make_run(tmp_path, resume=True, keep_last=3)
    trainer.run(DATA, max_epochs=3)
    assert ckpt.resumed_from == tmp_path / "checkpoint_epoch=1.pt"
    assert (tmp_path / "corrupt" / "checkpoint_epoch=2.pt").read_bytes() == b"an older one"
    assert (tmp_path / "corrupt" / "checkpoint_epoch=2.pt.1").read_bytes() == torn
    assert load_checkpoint(tmp_path / "checkpoint_epoch=2.pt")["epoch"] == 2  # trained again, a good file


@pytest.mark.parametrize("value", ["yes", "1", 1, None])
def test_resume_value_other_than_true_or_false_is_one_line(tmp_path, value):
    with pytest.raises(CheckpointSettingError, match=r"'resume' must be True or False, got .*Fix: pass --resume True"):
        make_run(tmp_path, resume=value)
    assert issubclass(CheckpointSettingError, ValueError) and CheckpointSettingError.__module__.startswith("pipeline.")


def test_checkpoint_of_another_network_is_one_line_without_resume_advice(tmp_path, caplog):
    make_run(tmp_path)[0].run(DATA, max_epochs=1)
    trainer, _, _, ckpt = make_run(tmp_path, resume=True)
    other = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))  # like resnet10 -> resnet18
    ckpt.network, ckpt.optimizer = other, torch.optim.AdamW(other.parameters())
    with caplog.at_level(logging.ERROR), pytest.raises(CheckpointError) as info:
        trainer.run(DATA, max_epochs=2)
    msg = _one_line(str(info.value))
    assert msg.startswith(f"{tmp_path / 'checkpoint_epoch=1.pt'} does not fit this network/optimizer")
    assert (
        "4 key(s) missing from the checkpoint (e.g. '0.weight')" in msg and "Fix: resume with the configuration" in msg
    )
    assert "continue with --resume True" not in caplog.text


def test_checkpointer_settings_are_one_line_errors(tmp_path):
    net = torch.nn.Linear(1, 1)
    with pytest.raises(CheckpointSettingError, match=r"'keep_last' must be an integer >= 1, got 0"):
        TrainingCheckpointer(tmp_path, net, torch.optim.SGD(net.parameters(), lr=0.1), keep_last=0)


# ------------------------------------------------------------------------------------------------ batch inference
def _infer_inputs(root: Path, n: int = 2) -> Path:
    from tests.test_inference import _box, _save

    for i in range(n):
        _save(root / f"case{i}.nii.gz", _box())
    return root


def _engine():
    from tests.test_inference import _engine as engine

    return engine()


def test_second_inference_run_on_a_locked_folder_stops_and_touches_nothing(tmp_path):
    from pipeline.inference.output import LOCK_NAME, OutputFolderError

    root, out = _infer_inputs(tmp_path / "in"), tmp_path / "out"
    out.mkdir()
    live_temp = out / ".case0_seg.nii.gz.partial-abc12345"  # the first run is writing it
    live_temp.write_bytes(b"half a mask")
    holder = (
        "import fcntl, os, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out / LOCK_NAME)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderError) as info:
            _engine().run(root, out)
        msg = _one_line(str(info.value))
        assert msg.startswith(f"Output folder {out} is in use by another inference run (PID {proc.pid}")
        assert live_temp.read_bytes() == b"half a mask" and not list(out.glob("*.nii.gz"))
        assert not (out / "summary.json").exists()
    finally:
        proc.communicate("")  # the holder exits: the kernel drops its lock; its lock file (with its PID) stays
    assert (out / LOCK_NAME).read_text() == str(proc.pid)
    report = _engine().run(root, out)  # a stale lock of a dead process does not block
    assert len(report.processed) == 2 and not (out / LOCK_NAME).exists()
    assert not live_temp.exists()  # now nobody is writing it: the stale temp is cleaned up


def test_inference_holds_the_lock_while_it_runs(tmp_path, monkeypatch):
    from pipeline.inference.output import LOCK_NAME, OutputFolderError

    root, out = _infer_inputs(tmp_path / "in", 1), tmp_path / "out"
    engine, seen = _engine(), []
    real = engine._write

    def write(item, probs):  # a second run starts while the first is writing
        with pytest.raises(OutputFolderError, match=rf"in use by another inference run \(PID {os.getpid()}"):
            _engine().run(root, out)
        seen.append((out / LOCK_NAME).read_text().strip())
        return real(item, probs)

    monkeypatch.setattr(engine, "_write", write)
    assert len(engine.run(root, out).processed) == 1
    assert seen == [str(os.getpid())]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda t: (t / "out").write_text("x"), r"Output folder .*/out is a file, expected a folder\. Fix:"),
        (lambda t: (t / "parent").write_text("x"), r"Output folder .*/parent/out cannot be created \(Not a directory"),
    ],
)
def test_unusable_output_folder_fails_before_any_work(tmp_path, capsys, make, match):
    from pipeline.cli import main

    make(tmp_path)
    out = tmp_path / "out" if (tmp_path / "out").exists() else tmp_path / "parent" / "out"
    root = _infer_inputs(tmp_path / "in", 1)
    assert main(["infer", "--bundle", str(tmp_path / "no_such_bundle"), str(root), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err  # the bundle was not even opened


@pytest.mark.parametrize(
    "err, fix",
    [
        (OSError(errno.EROFS, "Read-only file system"), "pass a folder on a writable file system"),
        (OSError(errno.ENOSPC, "No space left on device"), "free space on its disk"),
        (PermissionError(errno.EACCES, "Permission denied"), "make it writable (chmod u+w"),
    ],
)
def test_output_folder_write_probe_names_the_folder_and_the_fix(tmp_path, monkeypatch, err, fix):
    import pipeline.inference.output as output

    def probe(folder):
        raise err

    monkeypatch.setattr(output, "_write_probe", probe)
    root, out = _infer_inputs(tmp_path / "in", 1), tmp_path / "out"
    engine = _engine()
    monkeypatch.setattr(engine, "_prepare", lambda item: pytest.fail("a case was read"))
    with pytest.raises(output.OutputFolderError) as info:
        engine.run(root, out)
    msg = _one_line(str(info.value))
    assert msg.startswith(f"Output folder {out} is not writable ({err.strerror}): nothing was inferred. Fix: ")
    assert fix in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_refused(tmp_path):
    from pipeline.inference.output import OutputFolderError

    root, out = _infer_inputs(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir(mode=0o555)
    with pytest.raises(OutputFolderError, match=r"is not writable \(Permission denied\)"):
        _engine().run(root, out)


def test_symlink_loop_and_huge_header_fail_in_one_line_naming_the_file(tmp_path):
    root = _infer_inputs(tmp_path / "in", 1)
    os.symlink("loop.nii.gz", root / "loop.nii.gz")
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((4096, 4096, 4096))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 352
    (root / "huge.nii").write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    report = _engine().run(root, tmp_path / "out")
    failed = {Path(f["input"]).name: f for f in report.failed}
    assert len(report.processed) == 1 and set(failed) == {"loop.nii.gz", "huge.nii"}
    loop = failed["loop.nii.gz"]
    assert (loop["stage"], loop["reason"]) == (
        "read", f"{root / 'loop.nii.gz'}: Too many levels of symbolic links (errno 40); cannot open it."
    )  # fmt: skip
    huge = failed["huge.nii"]
    assert huge["stage"] == "check"
    assert huge["reason"].startswith("image too large: 68,719,476,736 voxels (header shape (4096, 4096, 4096))")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files of mode 000")
def test_unreadable_input_says_permission_denied(tmp_path):
    root = _infer_inputs(tmp_path / "in", 1)
    (root / "case0.nii.gz").chmod(0)
    (failed,) = _engine().run(root, tmp_path / "out").failed
    assert "Permission denied" in failed["reason"] and "case0.nii.gz" in failed["reason"]


def test_permission_denied_input_is_named(tmp_path, monkeypatch):
    import pipeline.inference.engine as engine_module

    root = _infer_inputs(tmp_path / "in", 2)
    denied = root / "case1.nii.gz"

    def fake_open(path, *args, **kwargs):  # what chmod 000 gives a non-root user
        if Path(path) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(engine_module, "open", fake_open, raising=False)
    report = _engine().run(root, tmp_path / "out")
    (failed,) = report.failed
    assert (failed["stage"], failed["reason"]) == ("read", f"{denied}: Permission denied (errno 13); cannot open it.")
    assert len(report.processed) == 1


@pytest.mark.slow
def test_bundle_inferring_failure_ends_as_one_line(tmp_path):
    """``monai.bundle run inferring`` with a broken input: the bundle's initialize (check_overrides) installs the
    one-line hook, so the run ends with the pipeline error, not MONAI's 'Failed to evaluate' traceback."""
    import shutil

    from pipeline.bundle.config import BUNDLE_3D
    from pipeline.bundle.run import bundle_command
    from pipeline.networks.unet import PretrainedUNet

    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE_3D, root, ignore=shutil.ignore_patterns("models", "runs"))
    (root / "models").mkdir()
    torch.manual_seed(0)
    torch.save(PretrainedUNet(3, 1, 4, "resnet10").state_dict(), root / "models" / "model.pt")
    images = tmp_path / "in"
    images.mkdir()
    (images / "broken.nii.gz").write_bytes(b"not a gzip file")
    overrides = {"dataset_dir": str(images), "output_dir": str(tmp_path / "out")}
    cmd = bundle_command(root, "inferring", ["inference.json"], overrides)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "InferenceFailed: 1 input(s) failed, e.g. " in out and "broken.nii.gz" in out
    assert "Failed to evaluate" not in out and "Traceback" not in out


# ------------------------------------------------------------------------------------------------ evaluate
EVAL_SHAPE = (16, 16, 8)


def _label_map() -> np.ndarray:
    lab = np.zeros(EVAL_SHAPE, np.uint8)
    lab[3:9, 2:8, 2:6] = 1  # off-centre: a flip moves it
    return lab


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def _evaluate(tmp_path: Path, pred: np.ndarray | None = None, affine: np.ndarray | None = None, *extra: str):
    from pipeline.cli import main

    _nifti(tmp_path / "labels" / "case0.nii.gz", _label_map())
    if pred is not None:
        _nifti(tmp_path / "preds" / "case0_seg.nii.gz", pred, affine)
    argv = ["evaluate", "--pred-dir", str(tmp_path / "preds"), "--label-dir", str(tmp_path / "labels")]
    return main([*argv, "--out", str(tmp_path / "eval"), "--class-names", '{"1": "organ"}', *extra])


def _shifted(mm: float) -> np.ndarray:
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[0, 3] = mm
    return aff


def _flipped_y() -> np.ndarray:
    aff = np.diag([2.0, -2.0, 3.0, 1.0])
    aff[1, 3] = 2.0 * (EVAL_SHAPE[1] - 1)  # same field of view, y axis reversed
    return aff


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_evaluate_refuses_non_integer_labels(tmp_path, capsys):
    from pipeline.cli import main

    assert _evaluate(tmp_path, _label_map()) == 0
    half = _label_map().astype(np.float32) * 0.5  # an interpolated or probability map
    _nifti(tmp_path / "labels" / "case0.nii.gz", half)
    argv = ["evaluate", "--pred-dir", str(tmp_path / "preds"), "--label-dir", str(tmp_path / "labels")]
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "eval2"), "--class-names", '{"1": "organ"}']) == 1
    err = _error(capsys)
    assert f"label {tmp_path / 'labels' / 'case0.nii.gz'} holds non-integer values (e.g. 0.5, 144 voxels)" in err
    assert "expected integer class labels. Fix:" in err and not (tmp_path / "eval2").exists()


def test_evaluate_refuses_a_non_integer_prediction(tmp_path, capsys):
    assert _evaluate(tmp_path, _label_map().astype(np.float32) * 0.5) == 1
    err = _error(capsys)
    assert f"prediction {tmp_path / 'preds' / 'case0_seg.nii.gz'} holds non-integer values (e.g. 0.5" in err


@pytest.mark.parametrize(
    "affine, diff",
    [(_shifted(20.0), "origin 20.0 mm apart"), (_flipped_y(), "orientation RPS vs RAS")],
    ids=["shift_20mm", "flip_y"],
)
def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path, capsys, affine, diff):
    assert _evaluate(tmp_path, _label_map(), affine) == 1
    err = _error(capsys)
    pred, label = tmp_path / "preds" / "case0_seg.nii.gz", tmp_path / "labels" / "case0.nii.gz"
    assert f"case 'case0': prediction {pred} and label {label} are on different grids (" in err and diff in err
    assert "Fix: save predictions in the label's grid" in err and "--resample" in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_resample_puts_a_flipped_prediction_on_the_label_grid(tmp_path, capsys):
    flipped = _label_map()[:, ::-1].copy()  # the same voxels in world space, stored with y reversed
    assert _evaluate(tmp_path, flipped, _flipped_y(), "--resample") == 0
    out = capsys.readouterr().out
    assert "resampled" in out and "orientation RPS vs RAS" in out
    rows = list(csv_rows(tmp_path / "eval"))
    assert [float(r["dice"]) for r in rows if r["class"] == "organ"] == [1.0]


def csv_rows(folder: Path):
    import csv

    (path,) = [p for p in folder.iterdir() if p.suffix == ".csv"]
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_evaluate_names_an_empty_or_truncated_prediction(tmp_path, capsys, damage):
    assert _evaluate(tmp_path, _label_map()) == 0
    pred = tmp_path / "preds" / "case0_seg.nii.gz"
    data = pred.read_bytes()
    pred.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    capsys.readouterr()
    assert _evaluate(tmp_path) == 1
    err = _error(capsys)
    assert err.startswith(f"error: prediction {pred} cannot be read (")
    assert ("the file is empty (0 bytes)" in err) == (damage == "empty")
    assert "Fix: re-run inference for this case" in err


def test_run_info_of_earlier_starts_is_kept(tmp_path):
    from pipeline.handlers.run_state import write_run_info

    write_run_info(tmp_path, 0)  # a start that failed
    write_run_info(tmp_path, 1)  # a fresh start in the same folder
    write_run_info(tmp_path, 1, resumed_from="checkpoint_epoch=1.pt")
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert [h["seed"] for h in info["history"]] == [0, 1] and info["resumed_from"] == "checkpoint_epoch=1.pt"


def test_bundle_checkpoint_of_resnet10_resumed_as_resnet18_is_one_line(tiny_dataset_3d, tmp_path):
    from pipeline.bundle.config import open_bundle
    from tests.conftest import BUNDLE_3D

    def build(backbone: str, resume: bool):
        overrides = {"backbone": backbone, "cache_rate": 0.0, "resume": resume, "pretrained": None}
        parser = open_bundle(BUNDLE_3D, ("train.json",), overrides, tiny_dataset_3d)
        parser["bundle_root"] = str(tmp_path)
        return [parser.get_parsed_content(k) for k in ("train#trainer", "checkpointer")]

    trainer, ckpt = build("resnet10", False)
    trainer.state.iteration = trainer.state.epoch_length
    path = ckpt._save(trainer, "epoch")
    trainer, ckpt = build("resnet18", True)
    with pytest.raises(CheckpointError) as info:
        ckpt.restore(trainer, load_checkpoint(path), path)
    msg = _one_line(str(info.value))
    assert msg.startswith(f"{path} does not fit this network/optimizer (")
    assert "key(s) missing from the checkpoint (e.g. 'encoder.layer1.1." in msg and len(msg) < 600


def test_disk_space_is_checked_before_a_checkpoint_write(tmp_path, monkeypatch):
    import shutil

    import pipeline.handlers.checkpoint_files as files

    make_run(tmp_path)[0].run(DATA, max_epochs=1)
    before = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 20, 10 << 20, 1000))
    big = {"network": torch.zeros(1 << 20)}  # 4 MB of tensors, 1000 bytes free
    with pytest.raises(CheckpointError) as info:
        files.atomic_save(big, tmp_path / "checkpoint_epoch=1.pt")
    msg = _one_line(str(info.value))
    assert msg.startswith(f"Not enough space to write {tmp_path / 'checkpoint_epoch=1.pt'}: it needs about 5 MB, 0 MB")
    assert f"free in {tmp_path}; nothing was written" in msg
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_evaluate_names_a_prediction_that_cannot_be_opened(tmp_path, capsys):
    pred = tmp_path / "preds" / "case0_seg.nii.gz"
    pred.parent.mkdir(parents=True)
    os.symlink(pred.name, pred)  # a symlink loop
    assert _evaluate(tmp_path) == 1
    err = _error(capsys)
    assert err == f"error: prediction {pred} cannot be opened (Too many levels of symbolic links, errno 40). Fix: " + (
        "check its permissions and path."
    )


def test_evaluate_refuses_another_shape_unless_resampling(tmp_path, capsys):
    bigger = np.zeros((20, 16, 8), np.uint8)
    bigger[3:9, 2:8, 2:6] = 1  # the label's organ, with 4 more empty slices along x
    assert _evaluate(tmp_path, bigger) == 1
    assert "are on different grids (shape (20, 16, 8) vs (16, 16, 8))" in _error(capsys)
    assert _evaluate(tmp_path, bigger, None, "--resample") == 0
    assert [float(r["dice"]) for r in csv_rows(tmp_path / "eval") if r["class"] == "organ"] == [1.0]


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from tests.test_inference import _make_bundle

    return _make_bundle(tmp_path_factory.mktemp("bundle") / "tiny_segmentation")


def test_infer_command_on_a_locked_folder_is_one_line(tiny_bundle, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.inference.output import output_lock

    root, out = _infer_inputs(tmp_path / "in", 1), tmp_path / "out"
    out.mkdir()
    with output_lock(out):  # another run holds it (here: this process, through another open file)
        assert main(["infer", "--bundle", str(tiny_bundle), str(root), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: Output folder {out} is in use by another inference run (PID {os.getpid()}, lock "
        f"{out / '.pipeline-infer.lock'}). Fix: wait for it to finish, or pass another output folder (a rerun later "
        "skips the cases it finished)."
    )
    assert not list(out.rglob("*.nii.gz"))


@pytest.mark.slow
def test_a_refused_start_leaves_nothing_behind(tmp_path):
    """A fresh run over an earlier run's checkpoints is refused by the bundle's first `run` step, before any engine,
    dataset or TensorBoard writer exists: one line, exit 1, no empty event files, the checkpoint untouched."""
    from tests.test_bad_inputs import _bundle_run, image, label, write_dataset

    root = write_dataset(tmp_path / "ds", {"a": (image(), label()), "b": (image(), label())})
    models = tmp_path / "b" / "models"
    models.mkdir(parents=True)
    (models / "checkpoint_epoch=1.pt").write_bytes(b"earlier run")
    proc, _ = _bundle_run(tmp_path / "b", root, "--patch_size", "[32,32,32]", "--pixdim", "[3.0,3.0,4.0]")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "CheckpointError: " in out and "already holds checkpoints" in out
    assert "Traceback" not in out
    assert sorted(p.name for p in (tmp_path / "b").rglob("*")) == ["checkpoint_epoch=1.pt", "models"]
    assert (models / "checkpoint_epoch=1.pt").read_bytes() == b"earlier run"

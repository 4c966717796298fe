"""Batch inference: masks in each input's grid, per-case failures, resume, atomic outputs under interruption,
bundle model loading, and the CLI and the bundle's ``inferring`` giving the same masks."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import pipeline.inference.engine as inference
from pipeline.bundle.config import BundleError
from pipeline.cli import main
from pipeline.inference.bundle import from_bundle
from pipeline.inference.engine import BatchInference
from pipeline.inference.report import InferenceFailed
from pipeline.inference.writers import TMP_MARK
from pipeline.networks.unet import PretrainedUNet
from tests.conftest import BUNDLE_3D

TINY_NET = {"backbone": "resnet10", "decoder_channels": [16, 8, 8, 8, 8]}


def _rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _affine(spacing, axes=np.eye(3), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = axes @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


AFFINES = {
    "ras_iso": _affine((1.0, 1.0, 1.0)),
    "lps_aniso": _affine((0.8, 0.8, 2.5), np.diag([-1.0, -1.0, 1.0]), (10.0, 20.0, -30.0)),
    "oblique": _affine((0.7, 1.1, 3.0), _rot_z(20) @ np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0.0]]), (5, -5, 40)),
}


def _box(shape=(24, 24, 12)) -> np.ndarray:
    """A bright block in one corner (asymmetric, so a flipped mask would miss it)."""
    img = np.zeros(shape, np.float32)
    img[2:10, 3:11, 1:5] = 1000.0
    return img


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINES["ras_iso"]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def _threshold_net() -> torch.nn.Module:
    """Two classes: label 1 where the scaled intensity is above 0.5."""
    net = torch.nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1, 1))
        net.bias.copy_(torch.tensor([5.0, -5.0]))
    return net


def _engine(net: torch.nn.Module | None = None, **kw) -> BatchInference:
    kw = {"roi_size": (32, 32, 32), "sw_batch_size": 1, "progress": False, "pixdim": (1.5, 1.5, 2.0), **kw}
    return BatchInference(net or _threshold_net(), class_names=["background", "box"], **kw)


def _digest(folder: Path) -> dict[str, tuple[str, int]]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files}


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if TMP_MARK in p.name]


def test_masks_keep_each_inputs_grid_and_content(tmp_path):
    root = tmp_path / "in"
    for name, aff in AFFINES.items():
        _save(root / name / f"{name}_0000.nii.gz", _box(), aff)
    _save(root / "dup.nii", _box())
    _save(root / "dup.nii.gz", _box())
    out = root / "masks"  # inside the input folder: must not be searched
    report = _engine(probabilities=True).run(root, out)

    (dup,) = report.failed
    assert dup["input"] == str(root / "dup.nii.gz") and dup["stage"] == "discover"
    assert (
        dup["reason"]
        == f"output {out / 'dup_seg.nii.gz'} collides with that of {root / 'dup.nii'}; rename one of the inputs"
    )
    assert len(report.processed) == 4
    box = _box() > 0
    for name, aff in AFFINES.items():
        mask = nib.load(out / name / f"{name}_seg.nii.gz")  # <rel dir>/<case id>_seg.nii.gz
        assert mask.shape == box.shape
        np.testing.assert_allclose(mask.affine, aff, atol=1e-5)
        assert mask.get_data_dtype() == np.uint8
        m = np.asarray(mask.dataobj) == 1
        dice = 2 * (m & box).sum() / (m.sum() + box.sum())
        assert dice > 0.8, (name, dice)  # resampled to 1.5x1.5x2 mm and back: edges blur, the block stays put
        prob = nib.load(out / name / f"{name}_prob.nii.gz")
        assert prob.shape == (*box.shape, 2) and prob.get_data_dtype() == np.float32
        np.testing.assert_allclose(prob.get_fdata().sum(-1), 1.0, atol=1e-4)
    rerun = _engine(probabilities=True).run(root, out)
    assert (len(rerun.processed), len(rerun.skipped)) == (0, 4)  # masks/ was not taken as input


def _make_bundle(root: Path, with_model: bool = True, drop: str | None = None) -> Path:
    (root / "configs").mkdir(parents=True)
    for f in ("metadata.json", "logging.conf"):
        shutil.copy(BUNDLE_3D / "configs" / f, root / "configs" / f)
    config = json.loads((BUNDLE_3D / "configs" / "inference.json").read_text())
    config.update(TINY_NET, roi_size=[32, 32, 32], sw_batch_size=1)
    config.pop(drop, None)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    if with_model:
        torch.manual_seed(0)
        (root / "models").mkdir()
        torch.save(PretrainedUNet(3, 1, 4, **TINY_NET).state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return _make_bundle(tmp_path_factory.mktemp("bundle") / "tiny_segmentation")


def test_cli_records_bad_inputs_resumes_and_overwrites(tiny_bundle, tmp_path, capsys):
    root, out = tmp_path / "archive", tmp_path / "out"
    _save(root / "good.nii.gz", _box())
    _save(root / "site" / "good_lps.nii.gz", _box((20, 22, 10)), AFFINES["lps_aniso"])
    (root / "corrupt.nii.gz").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "empty.nii.gz").write_bytes(b"")
    _save(root / "flat.nii.gz", np.ones((24, 24), np.float32))
    _save(root / "series4d.nii.gz", np.ones((24, 24, 12, 2), np.float32))
    nan = _box()
    nan[0, 0, 0] = np.nan
    _save(root / "nan.nii.gz", nan)
    before = _digest(root)
    argv = ["infer", "--bundle", str(tiny_bundle), str(root), str(out), "--no-progress"]

    assert main(argv) == 3
    assert "2 processed, 0 skipped (already done), 5 failed" in capsys.readouterr().out
    assert _digest(root) == before  # inputs never modified
    failures = {Path(r["input"]).name: (r["stage"], r["reason"]) for r in csv.DictReader((out / "failures.csv").open())}
    assert failures["corrupt.nii.gz"][0] == "read" and "not a gzip file" in failures["corrupt.nii.gz"][1]
    assert failures["empty.nii.gz"][0] == "read" and "Empty file" in failures["empty.nii.gz"][1]
    assert failures["flat.nii.gz"] == ("check", "expected a 3D image, got 2D spatial shape (24, 24); the model is 3D.")
    assert failures["series4d.nii.gz"][0] == "check" and "2 channels/volumes" in failures["series4d.nii.gz"][1]
    assert failures["nan.nii.gz"] == ("check", "1 of 6912 voxels are NaN/Inf; fix or mask the image.")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"processed": 2, "skipped": 0, "failed": 5, "ignored": 0}
    assert set(summary["processed"][0]["seconds"]) == {"load", "infer", "write"}
    assert summary["model"]["labels"] == {"0": "background", "1": "organ", "2": "vessel", "3": "lesion"}
    for src, mask in [("good.nii.gz", "good_seg.nii.gz"), ("site/good_lps.nii.gz", "site/good_lps_seg.nii.gz")]:
        a, b = nib.load(root / src), nib.load(out / mask)
        assert a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-5)
        assert set(np.unique(np.asarray(b.dataobj))) <= {0, 1, 2, 3}
    masks = {p: p.stat().st_mtime_ns for p in out.rglob("*_seg.nii.gz")}

    assert main(argv) == 3  # the bad inputs still fail; the good ones are not redone
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"processed": 0, "skipped": 2, "failed": 5, "ignored": 0}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_seg.nii.gz")} == masks

    assert main([*argv, "--overwrite", "--overlap", "0.5", "--mode", "constant"]) == 3
    assert json.loads((out / "summary.json").read_text())["counts"]["processed"] == 2
    assert _no_temp_files(out)


def test_bundle_inferring_writes_what_the_cli_writes(tiny_bundle, tmp_path):
    from monai.bundle import run

    root = tmp_path / "archive"
    _save(root / "a" / "case1.nii.gz", _box())
    _save(root / "case2.nii.gz", _box((20, 22, 10)), AFFINES["oblique"])
    assert main(["infer", "--bundle", str(tiny_bundle), str(root), str(tmp_path / "cli"), "--no-progress"]) == 0
    configs = tiny_bundle / "configs"
    kw = {"meta_file": str(configs / "metadata.json"), "bundle_root": str(tiny_bundle), "dataset_dir": str(root)}
    run("inferring", config_file=str(configs / "inference.json"), output_dir=str(tmp_path / "bundle"), **kw)
    for mask in ("a/case1_seg.nii.gz", "case2_seg.nii.gz"):
        cli, bundle = nib.load(tmp_path / "cli" / mask), nib.load(tmp_path / "bundle" / mask)
        np.testing.assert_array_equal(np.asarray(cli.dataobj), np.asarray(bundle.dataobj))
        np.testing.assert_array_equal(cli.affine, bundle.affine)

    (root / "broken.nii.gz").write_bytes(b"not an image")
    with pytest.raises(Exception) as raised:  # MONAI wraps it in "Failed to evaluate ConfigExpression"
        run("inferring", config_file=str(configs / "inference.json"), output_dir=str(tmp_path / "bundle"), **kw)
    cause = raised.value
    while not isinstance(cause, InferenceFailed) and cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, InferenceFailed) and "broken.nii.gz" in str(cause)


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    root, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        _save(root / f"case{i}.nii.gz", _box())
    real, calls = inference.nifti_chunks, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        chunks = real(*args, **kwargs)
        if len(calls) == 2:  # second mask: write part of it, then Ctrl-C
            yield next(chunks)
            raise KeyboardInterrupt
        yield from chunks

    monkeypatch.setattr(inference, "nifti_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _engine().run(root, out)
    masks = sorted(out.glob("*_seg.nii.gz"))
    assert [p.name for p in masks] == ["case0_seg.nii.gz"]
    assert np.asarray(nib.load(masks[0]).dataobj).shape == (24, 24, 12)  # complete, readable
    assert _no_temp_files(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["counts"]["processed"] == 1

    monkeypatch.setattr(inference, "nifti_chunks", real)
    report = _engine().run(root, out)
    assert (len(report.processed), len(report.skipped), report.exit_code) == (2, 1, 0)


class _SigtermOnCall(torch.nn.Module):
    """Sends SIGTERM to this process on the n-th forward pass (as a scheduler stopping the job would)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.net, self.n, self.calls = _threshold_net(), n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.net(x)


def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path):
    root, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        _save(root / f"case{i}.nii.gz", _box())
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        _engine(_SigtermOnCall(n=2)).run(root, out)
    assert signal.getsignal(signal.SIGTERM) is handler
    done = sorted(out.glob("*_seg.nii.gz"))
    assert len(done) <= 1 and "case1_seg.nii.gz" not in {p.name for p in done}
    for p in done:
        assert np.asarray(nib.load(p).dataobj).shape == (24, 24, 12)
    assert _no_temp_files(out)
    report = _engine().run(root, out)
    assert len(report.processed) + len(report.skipped) == 4 and report.exit_code == 0


def test_bundle_model_loading(tiny_bundle, tmp_path):
    state = torch.load(tiny_bundle / "models" / "model.pt", weights_only=True)
    for i, wrapped in enumerate(
        [{"model": state}, {"state_dict": state}, {"network": {f"module.{k}": v for k, v in state.items()}}]
    ):
        torch.save(wrapped, tmp_path / f"ckpt{i}.pt")
        engine = from_bundle(tiny_bundle, tmp_path / f"ckpt{i}.pt", {"progress": False})
        loaded = engine.network.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert engine.labels == {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
    assert list(engine.inferer.roi_size) == [32, 32, 32] and engine.inferer.overlap == 0.25
    assert engine.checkpoint == str(tmp_path / "ckpt2.pt") and engine.progress is False

    with pytest.raises(FileNotFoundError, match=r"No model weights at .*models/model.pt.*--checkpoint"):
        from_bundle(_make_bundle(tmp_path / "untrained", with_model=False))
    torch.save(PretrainedUNet(3, 1, 2, **TINY_NET).state_dict(), tmp_path / "two_classes.pt")
    with pytest.raises(ValueError, match=r"two_classes.pt: weights do not fit network_def"):
        from_bundle(tiny_bundle, tmp_path / "two_classes.pt")
    torch.save({"model": state, "extra": shutil.copy}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match=r"pickled.pt: cannot be loaded with weights_only=True"):
        from_bundle(tiny_bundle, tmp_path / "pickled.pt")
    with pytest.raises(BundleError, match=r"inference.json: no 'roi_size'"):
        from_bundle(_make_bundle(tmp_path / "no_roi", drop="roi_size"))
    with pytest.raises(BundleError, match=r"configs/inference.json not found"):
        from_bundle(tmp_path)
    assert main(["infer", "--bundle", str(tmp_path / "untrained"), str(tmp_path), str(tmp_path / "o")]) == 1
    with pytest.raises(InferenceFailed, match="1 input"):
        inference.InferenceReport(
            "in", "out", failed=[{"input": "x", "stage": "read", "reason": "r"}]
        ).raise_if_failed()


def test_class_names_as_one_string_is_refused():
    # a str is a Sequence: without the check "lesion" would become six labels l, e, s, ...
    with pytest.raises(ValueError, match=r"'class_names' must be a list of names .* got the string 'lesion'"):
        BatchInference(_threshold_net(), class_names="lesion", device="cpu")

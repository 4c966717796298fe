"""The bad-input matrix: each kind of bad input fails early with an error naming the file or key (what, expected,
got, fix), before any training; the few that are handled (small images) work and warn."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from pipeline.bundle.overrides import UnknownOverrideError, check_overrides
from pipeline.checks.dataset import check_dataset, check_training_data
from pipeline.checks.report import DataCheckError
from pipeline.handlers.checkpoint_files import CheckpointError, atomic_save, load_checkpoint
from tests.conftest import BUNDLE_3D

CONFIGS = BUNDLE_3D / "configs"
CLASSES = ["background", "organ", "vessel", "lesion"]
MONAI_MAIN = str(Path(__import__("monai").__file__).parent / "bundle" / "__main__.py")
CT5N = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def image(shape=(16, 16, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def label(shape=(16, 16, 8)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[4:12, 4:12] = 1
    lab[6:8, 6:8] = 2
    lab[9:11, 9:11] = 3
    return lab


def write_nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dataset(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], **affines: np.ndarray) -> Path:
    """``imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz``; ``affines["<case>_label"]`` overrides a label's."""
    for name, (img, lab) in cases.items():
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", img)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", lab, affines.get(f"{name}_label"))
    return root


def good(root: Path, n: int = 2) -> Path:
    return write_dataset(root, {f"case{i}": (image(seed=i), label()) for i in range(n)})


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _dicom_case(root: Path, folder: Path) -> Path:
    write_nifti(root / "labelsTr" / "dcm.nii.gz", label((16, 16, 5)))
    items = [{"image": str(folder), "label": "labelsTr/dcm.nii.gz"}]
    (root / "dataset.json").write_text(json.dumps({"labels": dict(enumerate(CLASSES)), "training": items}))
    return root


def _dicom_mixed(root: Path) -> tuple[Path, dict, str]:
    folder = root / "dicom_mixed"
    shutil.copytree(CT5N, folder)
    shutil.copy(CT_SMALL, folder / "CT_small.dcm")
    return _dicom_case(root, folder), {}, "dicom_mixed"


def _dicom_gap(root: Path) -> tuple[Path, dict, str]:
    folder = root / "dicom_gap"
    shutil.copytree(CT5N, folder)
    by_z = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_z[2].unlink()
    return _dicom_case(root, folder), {}, "dicom_gap"


def _json_duplicate(root: Path) -> tuple[Path, dict, str]:
    good(root, 1)
    item = {"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({"training": [item], "validation": [item]}))
    return root, {}, "case0"


def _unwritable(root: Path) -> tuple[Path, dict, str]:
    good(root)
    (root / "blocker").write_text("a file where a folder should be")
    return root, {"output_dirs": [root / "blocker" / "runs"]}, "blocker"


Builder = Callable[[Path], tuple[Path, dict, str]]
# id -> (expected problem kind, builder returning (dataset_dir, check_training_data kwargs, text the message must name))
BAD: dict[str, tuple[str, Builder]] = {
    "missing_file": ("missing_file", lambda r: (_rm(good(r) / "labelsTr" / "case1.nii.gz"), {}, "case1")),
    "corrupt_nifti": ("unreadable", lambda r: (_garbage(good(r) / "imagesTr" / "case0.nii.gz"), {}, "case0.nii.gz")),
    "truncated_gzip": ("truncated", lambda r: (_cut(good(r) / "imagesTr" / "case1.nii.gz"), {}, "case1.nii.gz")),
    "shape_mismatch": (
        "shape_mismatch",
        lambda r: (write_dataset(r, {"c": (image(), label((16, 16, 9)))}), {}, "labelsTr/c.nii.gz"),
    ),
    "affine_mismatch": (
        "affine_mismatch",
        lambda r: (write_dataset(r, {"c": (image(), label())}, c_label=np.diag([1, 1, 1.5, 1])), {}, "c.nii.gz"),
    ),
    "undeclared_label": (
        "label_values",
        lambda r: (write_dataset(r, {"c": (image(), np.where(label() == 3, 7, label()).astype(np.uint8))}), {}, "[7]"),
    ),
    "float_label": (
        "float_labels",
        lambda r: (write_dataset(r, {"c": (image(), label().astype(np.float32) * 0.5)}), {}, "labelsTr/c.nii.gz"),
    ),
    "nan_intensity": (
        "non_finite",
        lambda r: (write_dataset(r, {"c": (np.where(label() == 2, np.nan, image()), label())}), {}, "imagesTr/c"),
    ),
    "2d_into_3d": (
        "wrong_dims",
        lambda r: (write_dataset(r, {"c": (image((16, 16)), label((16, 16)))}), {}, "spatial_dims=3"),
    ),
    "3d_into_2d": (
        "wrong_dims",
        lambda r: (good(r), {"spatial_dims": 2, "patch_size": [32, 32]}, "spatial_dims=2"),
    ),
    "wrong_channels": (
        "wrong_channels",
        lambda r: (write_dataset(r, {"c": (image((16, 16, 8, 2)), label())}), {}, "in_channels"),
    ),
    "empty_folder": ("empty_dataset", lambda r: (_mkdir(r), {}, str(r))),
    "duplicate_case_folder": (
        "duplicate_case",
        lambda r: (_dup_file(good(r, 1) / "imagesTr" / "case0.nii.gz"), {}, "case0"),
    ),
    "duplicate_case_json": ("duplicate_case", _json_duplicate),
    "dicom_mixed_series": ("dicom_mixed_series", _dicom_mixed),
    "dicom_missing_slice": ("dicom_geometry", _dicom_gap),
    "patch_not_multiple_of_stride": ("patch_stride", lambda r: (good(r), {"patch_size": [48, 48, 32]}, "patch_size")),
    "output_not_writable": ("output_not_writable", _unwritable),
}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _rm(path: Path) -> Path:
    path.unlink()
    return path.parents[1]


def _garbage(path: Path) -> Path:
    path.write_bytes(b"this is not a NIfTI file" * 20)
    return path.parents[1]


def _cut(path: Path) -> Path:
    _truncate(path)
    return path.parents[1]


def _dup_file(path: Path) -> Path:
    write_nifti(path.with_name("case0.nii"), image())
    return path.parents[1]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_fails_early_naming_the_file(case, tmp_path):
    kind, build = BAD[case]
    root, kwargs, needle = build(tmp_path / "ds")
    settings = {"class_names": CLASSES, "patch_size": [32, 32, 32], "output_dirs": [tmp_path / "out"], **kwargs}
    with pytest.raises(DataCheckError) as info:
        check_training_data(root, **settings)
    problem = next((p for p in info.value.problems if p.kind == kind), None)
    assert problem is not None, str(info.value)
    assert needle in str(problem) and "Fix" in problem.message  # names the file/key, says how to fix it
    assert problem.where in str(info.value)


def test_every_problem_is_reported_not_just_the_first(tmp_path):
    root = good(tmp_path / "ds", 4)
    _truncate(root / "imagesTr" / "case0.nii.gz")
    write_nifti(root / "labelsTr" / "case1.nii.gz", label((16, 16, 9)))
    (root / "labelsTr" / "case2.nii.gz").unlink()
    write_nifti(root / "labelsTr" / "case3.nii.gz", np.full((16, 16, 8), 9, np.uint8))
    report = check_dataset(root, class_names=CLASSES, level="full")
    found = {(p.kind, Path(p.where).name) for p in report.errors}
    assert {
        ("truncated", "case0.nii.gz"),
        ("shape_mismatch", "case1.nii.gz"),
        ("missing_file", "case2.nii.gz"),
        ("label_values", "case3.nii.gz"),
    } <= found


def test_image_smaller_than_patch_is_padded_and_warns(tmp_path, caplog):
    from pipeline.transforms.chains import train_transforms

    root = good(tmp_path / "ds", 1)
    with caplog.at_level(logging.WARNING, logger="pipeline.checks"):
        report = check_training_data(root, class_names=CLASSES, patch_size=[32, 32, 32], pixdim=None)
    assert not report.errors
    assert [p.kind for p in report.warnings] == ["small_image"]
    assert "zero-padded" in caplog.text and "case0 [16, 16, 8]" in caplog.text
    chain = train_transforms(3, (32, 32, 32), 4, pixdim=None, num_samples=2, augment=False, crop_foreground=False)
    item = {"image": str(root / "imagesTr" / "case0.nii.gz"), "label": str(root / "labelsTr" / "case0.nii.gz")}
    out = chain(item)
    assert [tuple(o["image"].shape) for o in out] == [(1, 32, 32, 32)] * 2


def test_patch_not_multiple_of_stride_is_an_error_because_the_network_fails():
    """FlexibleUNet does not pad its input: 48 fails deep in the decoder, hence the up-front error."""
    from pipeline.checks.settings import check_patch_size
    from pipeline.networks.unet import PretrainedUNet

    [problem] = check_patch_size([48, 64, 32], 3, "resnet10")
    assert "not a multiple of 32 on axis [0]" in problem.message and "[64, 64, 32]" in problem.message
    net = PretrainedUNet(3, 1, 2, "resnet10", decoder_channels=(16, 8, 8, 8, 4)).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        net(torch.zeros(1, 1, 48, 64, 32))


def test_pretrained_weights_of_another_architecture_name_the_file(tmp_path):
    from pipeline.networks.unet import PretrainedUNet
    from pipeline.networks.weights import ArchitectureMismatchError, pretrained_network

    src = tmp_path / "resnet18_weights.pt"
    torch.save(PretrainedUNet(2, 1, 2, "resnet18").state_dict(), src)
    with pytest.raises(ArchitectureMismatchError, match="resnet18_weights.pt") as info:
        pretrained_network(PretrainedUNet(2, 1, 2, "resnet10"), src)
    assert "Fix" in str(info.value)


@pytest.mark.parametrize(
    ("override", "nearest"),
    [("--max_epoch", "--max_epochs"), ("--train#trainer#max_epoch=3", "--train#trainer#max_epochs"), ("--lrr", "--lr")],
)
def test_unknown_override_names_the_key_and_the_nearest_id(override, nearest):
    argv = [MONAI_MAIN, "run", "training", "--config_file", str(CONFIGS / "train.json"), "--bundle_root", "b"]
    argv += [override, "3"] if "=" not in override else [override]
    with pytest.raises(UnknownOverrideError) as info:
        check_overrides(argv)
    assert override.split("=")[0] in str(info.value) and f"did you mean {nearest}?" in str(info.value)


def test_known_overrides_and_non_bundle_command_lines_pass(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ratios": [1, 1, 2, 4]}))
    files = json.dumps([str(CONFIGS / "train.json"), str(CONFIGS / "finetune.json")])
    argv = [MONAI_MAIN, "run", "training", "--config_file", files, "--args_file", str(args), "--max-epochs", "3"]
    assert sorted(check_overrides(argv + ["--unfreeze_stages", "[]", "--resume", "True"])) == [
        "max_epochs",
        "ratios",
        "resume",
        "unfreeze_stages",
    ]
    assert check_overrides(["pytest", "-q", "--max_epoch", "3"]) == []  # not a bundle run: nothing to check


def test_full_disk_in_torch_zip_writer_is_a_checkpoint_error(tmp_path, monkeypatch):
    # torch's zip writer reports a full disk as RuntimeError, not OSError (seen on a 60 MB tmpfs)
    atomic_save({"w": torch.ones(3)}, tmp_path / "model.pt")
    before = (tmp_path / "model.pt").read_bytes()

    def zip_full(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 14680064 vs 14680000")

    monkeypatch.setattr(torch, "save", zip_full)
    with pytest.raises(CheckpointError, match=r"model\.pt \(\[enforce fail.*disk is probably full"):
        atomic_save({"w": torch.zeros(3)}, tmp_path / "model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"] and (tmp_path / "model.pt").read_bytes() == before


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    atomic_save({"format": "x", "weights": torch.ones(3)}, tmp_path / "checkpoint_epoch=1.pt")
    before = (tmp_path / "checkpoint_epoch=1.pt").read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"checkpoint_epoch=2\.pt \(No space left on device\).*disk is full"):
        atomic_save({"weights": torch.zeros(3)}, tmp_path / "checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch=1.pt"]  # no temp file, no partial file
    assert (tmp_path / "checkpoint_epoch=1.pt").read_bytes() == before
    with pytest.raises(CheckpointError, match="not a pipeline-checkpoint"):
        load_checkpoint(tmp_path / "checkpoint_epoch=1.pt")  # loads (weights_only) but is no training checkpoint


def _bundle_run(root: Path, dataset: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    cmd += ["--bundle_root", str(root), "--dataset_dir", str(dataset), *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return proc, time.perf_counter() - start


@pytest.mark.slow
def test_bundle_run_fails_fast_on_an_override_typo(tmp_path):
    proc, _ = _bundle_run(tmp_path / "b", tmp_path / "nodata", "--max_epoch", "3")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Unknown config override(s) --max_epoch (did you mean --max_epochs?)" in out
    assert "Failed to evaluate" not in out  # the message is not buried under MONAI's wrapper traceback


@pytest.mark.slow
def test_bundle_run_fails_before_training_on_bad_data(tmp_path):
    root = write_dataset(tmp_path / "ds", {"a": (image(), label()), "b": (image(), label((16, 16, 9)))})
    proc, _ = _bundle_run(tmp_path / "b", root, "--patch_size", "[32,32,32]", "--pixdim", "[3.0,3.0,4.0]")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "DataCheckError" in out and "labelsTr/b.nii.gz: label shape [16, 16, 9] differs from image" in out
    assert "Epoch" not in out and not list(tmp_path.rglob("*.pt"))  # nothing was trained or written

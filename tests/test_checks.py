"""Dataset/config checks: what each level reads, header-only geometry, the check-data command."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.checks import (
    bundle_overrides,
    check_dataset,
    check_patch_size,
    check_training_data,
    network_stride,
    read_image_info,
)
from pipeline.cli import main
from tests.conftest import BUNDLE_3D
from tests.test_bad_inputs import CLASSES, MONAI_MAIN, good, image, label, write_dataset, write_nifti


def test_synthetic_dataset_passes_with_the_bundle_settings(tiny_dataset_3d):
    report = check_training_data(
        tiny_dataset_3d, 3, 1, CLASSES, patch_size=[64, 64, 32], pixdim=[1.5, 1.5, 2.0], level="full"
    )
    assert report.cases == 4 and report.problems == []


def test_headers_level_reads_no_voxel_data(tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "ds", {"c": (np.where(label() == 1, np.inf, image()), label())})

    def no_voxels(path):
        raise AssertionError(f"voxel data of {path} was read")

    monkeypatch.setattr("pipeline.checks.dataset.load_array", no_voxels)
    assert check_dataset(root, class_names=CLASSES, level="headers").problems == []
    monkeypatch.undo()
    [problem] = check_dataset(root, class_names=CLASSES, level="full").problems
    assert problem.kind == "non_finite" and "0 NaN and 448 Inf voxel(s)" in problem.message


def test_multi_member_gzip_is_not_mistaken_for_truncation(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", image())
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))  # trailer holds the last member's size
    assert read_image_info(path).spatial_shape == (16, 16, 8)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(EOFError, match="gzip stream breaks off"):
        read_image_info(path)


@pytest.mark.parametrize(
    ("shape", "spatial", "channels"),
    [
        ((16, 16, 8), (16, 16, 8), 1),
        ((16, 16, 8, 3), (16, 16, 8), 3),
        ((16, 16, 1), (16, 16), 1),
        ((16, 16), (16, 16), 1),
    ],
)
def test_nifti_axes_split_into_space_and_channels(tmp_path, shape, spatial, channels):
    info = read_image_info(write_nifti(tmp_path / "x.nii", np.zeros(shape, np.float32)))
    assert (info.spatial_shape, info.channels) == (spatial, channels)


def test_classes_come_from_dataset_json_when_not_given(tmp_path):
    root = good(tmp_path / "ds", 1)
    write_nifti(root / "labelsTr" / "case0.nii.gz", np.full((16, 16, 8), 5, np.uint8))
    item = {"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a"}, "training": [item]}))
    [problem] = check_dataset(root).problems
    assert problem.kind == "label_values" and "[5] are not declared classes [0, 1]" in problem.message


def test_patch_size_checks():
    assert network_stride("resnet10") == network_stride("efficientnet-b0") == 32
    assert check_patch_size([64, 64, 32]) == []
    [problem] = check_patch_size([64, 64], spatial_dims=3)
    assert "must have 3 entries" in problem.message


def test_bundle_command_line_is_parsed_like_fire(tmp_path):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"config_file": "c.json", "lr": 0.1}))
    argv = [MONAI_MAIN, "run", "training", "--meta_file=m.json", "--args_file", str(args), "--a-b", "1", "--flag"]
    run_args, overrides = bundle_overrides(argv) or ({}, {})
    assert run_args == {"run_id": "training", "meta_file": "m.json", "args_file": str(args), "config_file": "c.json"}
    assert overrides == {"a_b": "1", "flag": "", "lr": 0.1}
    assert bundle_overrides(["/x/pytest", "run"]) is None


def test_check_data_command_lists_every_problem(tmp_path, capsys):
    root = good(tmp_path / "ds", 3)
    write_nifti(root / "labelsTr" / "case1.nii.gz", label((16, 16, 9)))
    write_nifti(root / "imagesTr" / "case2.nii.gz", np.full((16, 16, 8), np.nan, np.float32))
    out_json = tmp_path / "report.json"
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_3D), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "2 error(s)" in out and "labelsTr/case1.nii.gz: label shape [16, 16, 9]" in out
    assert "imagesTr/case2.nii.gz: 2048 NaN" in out and "smaller than patch_size [64, 64, 32]" in out
    kinds = sorted(p["kind"] for p in json.loads(out_json.read_text())["problems"])
    assert kinds == ["non_finite", "shape_mismatch", "small_image"]
    assert main(["check-data", str(good(tmp_path / "ok", 1)), "--level", "headers"]) == 0
    assert Path(out_json).is_file()


def test_set_options_parse_json_or_plain_strings_and_name_the_option():
    from pipeline.checks import parse_set_options

    got = parse_set_options(["patch_size=[32,32,32]", "lr=0.01", "backbone=resnet18", "url=a=b"])
    assert got == {"patch_size": [32, 32, 32], "lr": 0.01, "backbone": "resnet18", "url": "a=b"}
    with pytest.raises(ValueError, match=r"--set expects ID=JSON, got 'lr'; e.g. --set 'patch_size=\[32,32,32\]'"):
        parse_set_options(["lr"])

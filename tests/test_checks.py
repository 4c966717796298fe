"""Dataset/config checks: what each level reads, header-only geometry, 2D RGB-coded masks, the check-data command."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.bundle.config import BUNDLE_2D
from pipeline.bundle.overrides import bundle_overrides
from pipeline.checks.dataset import (
    DataCheckError,
    check_dataset,
    check_patch_size,
    check_training_data,
    network_stride,
)
from pipeline.checks.images import read_image_info
from pipeline.cli import main
from pipeline.data.synthetic2d import CLASS_NAMES_2D, LABEL_COLORS_2D, make_site_2d
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

    monkeypatch.setattr("pipeline.checks.images.load_array", no_voxels)
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


def test_class_names_that_differ_from_dataset_labels_are_an_error(tmp_path, capsys):
    root = good(tmp_path / "ds", 1)
    item = {"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}
    labels = {"0": "background", "1": "Organ", "2": "vessel", "3": "LESION"}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": [item]}))
    assert check_dataset(root, class_names=CLASSES).problems == []  # same names, other case
    problems = check_dataset(root, class_names=["background", "organ"]).problems
    assert sorted(p.kind for p in problems) == ["class_names", "label_values"]  # values 2, 3 are undeclared too
    [problem] = [p for p in problems if p.kind == "class_names"]
    assert problem.where == "class_names"
    assert "2 classes ['background', 'organ'], but" in problem.message and "declare 4" in problem.message
    labels["3"] = "tumour"
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": [item]}))
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_3D)]) == 1
    out = capsys.readouterr().out
    assert f"[error] {BUNDLE_3D / 'configs' / 'train.json'} class_names: 4 classes" in out
    assert f"python -m pipeline plan {root} --bundle {BUNDLE_3D} --out plan.json" in out
    names = json.dumps(["background", "organ", "vessel", "tumour"])
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_3D), "--set", f"class_names={names}"]) == 0
    with pytest.raises(DataCheckError, match=r"class_names: 4 classes .* 'labels' declare 4: .*'tumour'"):
        check_training_data(root, 3, 1, CLASSES)  # what a bundle's data_check does before training


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
    from pipeline.bundle.overrides import parse_set_options

    got = parse_set_options(["patch_size=[32,32,32]", "lr=0.01", "backbone=resnet18", "url=a=b"])
    assert got == {"patch_size": [32, 32, 32], "lr": 0.01, "backbone": "resnet18", "url": "a=b"}
    with pytest.raises(ValueError, match=r"--set expects ID=JSON, got 'lr'; e.g. --set 'patch_size=\[32,32,32\]'"):
        parse_set_options(["lr"])


# ------------------------------------------------------------------------------------------------ 2D
def rgb_dataset_2d(root: Path) -> Path:
    """Tiny synthetic 2D dataset: 3 cases of 128x100 grey PNGs with RGB-coded masks (colours in dataset.json)."""
    return make_site_2d(root, site="B", n_train=2, n_val=1, n_test=0, label_format="rgb")


def test_one_check_reads_2d_rgb_masks_as_the_2d_chains_do(tmp_path):
    root = rgb_dataset_2d(tmp_path / "ds")
    colours = {str(k): list(v) for k, v in LABEL_COLORS_2D.items()}
    names = list(CLASS_NAMES_2D.values())
    report = check_training_data(root, 2, 1, names, [64, 64], backbone="resnet18", label_colors=colours)
    assert report.cases == 3 and report.problems == []
    with pytest.raises(DataCheckError) as info:  # what the 2D bundle's data_check does without label_colors
        check_training_data(root, 2, 1, names, [64, 64], backbone="resnet18")
    assert {p.kind for p in info.value.problems} == {"label_values"}
    assert "caseB_000.png: label has 3 channels" in str(info.value) and "set label_colors" in str(info.value)


def test_check_data_command_on_a_2d_rgb_mask_dataset_with_the_2d_bundle(tmp_path, capsys):
    root = rgb_dataset_2d(tmp_path / "ds")
    out_json = tmp_path / "report.json"
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_2D), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "0 error(s), 1 warning(s)" in out and "(3 case(s) checked)" in out
    assert "the bundle sets no label_colors" in out and '--label_colors \'{"0": [0, 0, 0], "1": [255, 0, 0]' in out
    assert [p["kind"] for p in json.loads(out_json.read_text())["problems"]] == ["label_colors"]
    mask = root / "labelsTr" / "caseB_001.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[3, 7] = [255, 255, 0]
    Image.fromarray(rgb).save(mask)
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_2D)]) == 1
    out = capsys.readouterr().out
    assert f"{mask}: 1 pixel(s) have colours not in 'label_colors': [255, 255, 0] (1 px, first at row 3, col 7)" in out
    colours = json.dumps({"0": [0, 0, 0], "1": [255, 0, 0], "2": [0, 0, 255], "3": [255, 255, 0]})
    assert main(["check-data", str(root), "--bundle", str(BUNDLE_2D), "--set", f"label_colors={colours}"]) == 2
    assert "'label_colors' class 3 is not below num_classes=3" in capsys.readouterr().out

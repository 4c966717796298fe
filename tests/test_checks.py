"""Dataset/config checks: what each level reads, header-only geometry, 2D RGB-coded masks, the check-data command."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.bundle.config import BUNDLE_2D
from pipeline.bundle.overrides import bundle_overrides
from pipeline.bundle.run import bundle_command
from pipeline.checks.dataset import check_dataset, check_training_data
from pipeline.checks.images import SpacingError, read_image_info
from pipeline.checks.report import DataCheckError
from pipeline.checks.settings import check_patch_size, network_stride
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


# ------------------------------------------------------------------------------------------------ issue 18 items
def test_all_background_training_labels_are_an_error_and_an_absent_class_a_warning(tmp_path, capsys):
    root = write_dataset(tmp_path / "ds", {f"c{i}": (image(seed=i), np.zeros((16, 16, 8), np.uint8)) for i in range(2)})
    [problem] = check_dataset(root, class_names=CLASSES).problems
    assert (problem.kind, problem.severity, problem.where) == ("background_only", "error", str(root / "labelsTr"))
    assert "all 2 training label(s) read are background only" in problem.message and "Fix:" in problem.message
    assert check_dataset(root, class_names=CLASSES, level="headers").problems == []  # labels are not read
    assert main(["check-data", str(root)]) == 1
    assert f"[error] {root / 'labelsTr'}: all 2 training label(s) read are background only" in capsys.readouterr().out
    no_lesion = label()
    no_lesion[no_lesion == 3] = 0
    root = write_dataset(tmp_path / "ds2", {"c0": (image(), label()), "c1": (image(seed=1), no_lesion)})
    assert check_dataset(root, class_names=CLASSES).problems == []  # lesion is in c0
    write_nifti(root / "labelsTr" / "c0.nii.gz", no_lesion)
    [problem] = check_dataset(root, class_names=CLASSES).problems
    assert (problem.kind, problem.severity, problem.where) == ("absent_class", "warning", "class 3 'lesion'")
    assert "present in none of the 2 label(s) read" in problem.message
    with pytest.raises(DataCheckError, match="background only"):
        write_dataset(root, {"c0": (image(), np.zeros((16, 16, 8), np.uint8))})
        write_nifti(root / "labelsTr" / "c1.nii.gz", np.zeros((16, 16, 8), np.uint8))
        check_training_data(root, 3, 1, CLASSES)


def test_zero_or_negative_pixdim_without_qform_or_sform_is_an_error_naming_the_file(tmp_path):
    root = good(tmp_path / "ds", 1)
    path = root / "imagesTr" / "case0.nii.gz"
    img = nib.Nifti1Image(image(), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    raw = bytearray(img.header.binaryblock)
    raw[80:92] = struct.pack("<3f", 0.0, -1.0, 1.0)  # pixdim[1:4]; nibabel would "fix" it on save
    path.write_bytes(gzip.compress(bytes(raw) + b"\0" * 4 + image().tobytes(order="F")))
    with pytest.raises(SpacingError, match=r"pixdim \[0.0, -1.0, 1.0\] has zero, negative .* no qform/sform"):
        read_image_info(path)
    [problem] = check_dataset(root, class_names=CLASSES).problems
    assert (problem.kind, problem.where) == ("bad_spacing", str(path)) and "Fix: re-export" in problem.message
    img.header.set_qform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)  # the qform gives the geometry: pixdim unused
    raw = bytearray(img.header.binaryblock)
    raw[80:92] = struct.pack("<3f", 0.0, -1.0, 1.0)
    path.write_bytes(gzip.compress(bytes(raw) + b"\0" * 4 + image().tobytes(order="F")))
    assert read_image_info(path).spatial_shape == (16, 16, 8)


def test_missing_training_section_names_the_section_and_file(tmp_path, capsys):
    root = good(tmp_path / "ds", 1)
    item = {"image": "imagesTr/case0.nii.gz", "label": "labelsTr/case0.nii.gz"}
    (root / "dataset.json").write_text(json.dumps({"labels": dict(enumerate(CLASSES)), "train": [item]}))
    [problem] = check_dataset(root).problems
    assert (problem.kind, problem.where) == ("datalist", f"{root / 'dataset.json'}:training")
    assert "has no 'training' section (it has ['labels', 'train'])" in problem.message
    assert main(["check-data", str(root)]) == 1
    assert "dataset.json has no 'training' section" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda raw, data: data[:5], r"ends inside its gzip header \(5 bytes on disk, no image data at all"),
        (
            lambda raw, data: gzip.compress(raw[:200]),
            r"decompresses completely to 200 bytes, but expected 348 bytes of the NIfTI header",
        ),
        (
            lambda raw, data: data[: len(data) // 2],
            r"breaks off after \d+ of the 8544 bytes the NIfTI header calls for",
        ),
        (lambda raw, data: gzip.compress(raw[:-100]), r"decompresses completely to 8444 bytes, but expected 8544"),
        (lambda raw, data: b"", r"the file is empty \(0 bytes"),
    ],
)
def test_truncated_gzip_says_how_many_bytes_were_read_and_expected(tmp_path, cut, message):
    root = good(tmp_path / "ds", 1)
    path = root / "imagesTr" / "case0.nii.gz"  # 352 + 16*16*8*4 = 8544 bytes
    data = path.read_bytes()
    path.write_bytes(cut(gzip.decompress(data), data))
    with pytest.raises(EOFError, match="truncated file: .*" + message):
        read_image_info(path)
    [problem] = check_dataset(root, class_names=CLASSES).problems
    assert (problem.kind, problem.where) == ("truncated", str(path)) and "Fix: copy or export" in problem.message


@pytest.mark.parametrize(
    ("value", "eg"),
    [(64, "[64, 64, 64]"), ("64", "[96, 96, 96]"), ([64, 0, 32], "[96, 96, 96]"), (True, "[96, 96, 96]")],
)
def test_patch_size_that_is_not_a_list_of_ints_is_one_error_line(tmp_path, capsys, value, eg):
    [problem] = check_patch_size(value)
    assert problem.where == "patch_size"
    assert f"must be a list of 3 positive integers (one per spatial axis, spatial_dims=3), got {value!r}" in str(
        problem
    )
    assert f'--patch_size "{eg}"' in problem.message
    root = good(tmp_path / "ds", 1)
    assert main(["check-data", str(root), "--set", f"patch_size={json.dumps(value)}"]) == 1
    out = capsys.readouterr().out
    assert "1 error(s), 0 warning(s)" in out and "[error] patch_size: must be a list of 3" in out
    assert "Traceback" not in out
    with pytest.raises(DataCheckError, match=r"patch_size: must be a list of 3 positive integers"):
        check_training_data(root, 3, 1, CLASSES, patch_size=value)


def test_a_file_without_read_permission_says_so(tmp_path, monkeypatch, capsys):
    root = good(tmp_path / "ds", 1)
    path = root / "imagesTr" / "case0.nii.gz"
    real_load = nib.load

    def load(name, *args, **kwargs):  # chmod 000 does not stop root, so the refusal is simulated
        if str(name) == str(path):
            raise PermissionError(13, "Permission denied", str(name))
        return real_load(name, *args, **kwargs)

    monkeypatch.setattr(nib, "load", load)
    [problem] = check_dataset(root, class_names=CLASSES).problems
    assert (problem.kind, problem.where) == ("unreadable", str(path))
    assert "(PermissionError: [Errno 13] Permission denied" in problem.message and "chmod a+r" in problem.message


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, 1e-3, "text", "/tmp/a b/c.json", "1", "None", "true", [1, None], [[0.5, 1.0], None],
     {"mode": "percentile", "lower": 0.5, "flag": True, "none": None}, ["it's", 'say "hi"', "back\\slash"]],
)  # fmt: skip
def test_bundle_command_values_reach_monai_unchanged(value):
    """`python -m monai.bundle run` parses its command line with python-fire (Python literals, not JSON): a JSON
    `null`/`true` would arrive as the string 'null'/'true'."""
    from fire.parser import DefaultParseValue

    cmd = bundle_command("/b", "training", ["train.json"], {"x": value})
    assert DefaultParseValue(cmd[cmd.index("--x") + 1]) == value
    assert type(DefaultParseValue(cmd[cmd.index("--x") + 1])) is type(value)


def test_configure_bundle_keeps_metadata_with_the_classes_and_takes_only_shared_literals(tmp_path):
    from pipeline.bundle.run import configure_bundle, shared_values, stage_bundle

    bundle = stage_bundle(BUNDLE_2D, tmp_path / "b")
    plan = {"class_names": ["background", "nucleus"], "out_channels": 2, "in_channels": 3, "patch_size": [256, 256]}
    values = shared_values(bundle, plan)
    assert values == {"class_names": ["background", "nucleus"], "in_channels": 3}  # out_channels stays "$len(...)"
    configure_bundle(bundle, values)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    assert meta["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "nucleus"}
    assert meta["outputs"]["pred"]["num_channels"] == 2 and meta["inputs"]["image"]["num_channels"] == 3
    before = {p.name: p.read_text() for p in (bundle / "configs").iterdir()}
    with pytest.raises(KeyError, match="no top-level ids \\['no_such_id'\\]"):
        configure_bundle(bundle, {"class_names": ["a", "b"], "no_such_id": 1})
    assert {p.name: p.read_text() for p in (bundle / "configs").iterdir()} == before  # nothing half-written

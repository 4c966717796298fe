from __future__ import annotations

import gzip
import json
import math
import re
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pipeline.apps.audit import ClassNamesError, audit_dataset, override_config, write_audit
from pipeline.bundle.config import BUNDLE_2D
from pipeline.cli import main
from pipeline.data.synthetic2d import SITES_2D, make_case_2d
from tests.conftest import BUNDLE_3D
from tests.test_checks import rgb_dataset_2d

LABELS = {"0": "background", "1": "organ", "2": "lesion"}


def _write(root: Path, cases: dict[str, tuple[np.ndarray, np.ndarray]], labels=LABELS) -> Path:
    """MSD-style dataset: imagesTr/labelsTr/<case>.nii.gz + dataset.json; cases = {name: (label, affine)}."""
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for name, (label, affine) in cases.items():
        nib.save(nib.Nifti1Image(np.zeros(label.shape, np.float32), affine), str(root / "imagesTr" / f"{name}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"{name}.nii.gz"))
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "training": training}))
    return root


@pytest.fixture
def crafted(tmp_path) -> Path:
    a = np.zeros((4, 5, 2), np.uint8)  # 40 voxels of 2x1x3 mm = 6 mm3
    a[0:2, 0:2, 0] = 1  # organ structure of 4 voxels
    a[0, 4, 0:2] = 1  # organ structure of 2 voxels (not touching the first)
    a[3, 4, 0] = 2  # two lesion voxels touching only diagonally: one structure with 26-connectivity
    a[2, 3, 1] = 2
    b = np.zeros((3, 3, 3), np.uint8)  # 27 voxels of 1 mm3, LPS, no lesion
    b[1, 1, 1] = 1
    return _write(
        tmp_path / "ds", {"c1": (a, np.diag([2.0, 1.0, 3.0, 1.0])), "c2": (b, np.diag([-1.0, -1.0, 1.0, 1.0]))}
    )


def test_fractions_structures_and_geometry_match_hand_counts(crafted):
    report = audit_dataset(crafted)
    assert report.errors == []
    assert report.class_names == {0: "background", 1: "organ", 2: "lesion"}
    bg, organ, lesion = report.classes
    assert [bg["voxels"], organ["voxels"], lesion["voxels"]] == [58, 7, 2]
    assert organ["fraction"] == pytest.approx(7 / 67) and lesion["fraction"] == pytest.approx(2 / 67)
    assert bg["fraction"] == pytest.approx(58 / 67)
    assert (organ["cases_present"], organ["cases_absent"]) == (2, [])
    assert (lesion["cases_present"], lesion["cases_absent"]) == (1, ["c2"])
    assert organ["structures"] == 3 and lesion["structures"] == 1
    assert organ["smallest"] == {"voxels": 1, "mm3": 1.0, "case": "c2"}
    assert organ["largest"] == {"voxels": 4, "mm3": 24.0, "case": "c1"}
    assert lesion["smallest"] == {"voxels": 2, "mm3": 12.0, "case": "c1"}
    c1, c2 = report.cases
    assert c1.voxels == {0: 32, 1: 6, 2: 2} and c1.components == {1: [2, 2, 4], 2: [1, 2, 2]}
    assert report.to_dict()["cases"][0]["fractions"] == {"background": 0.8, "organ": 0.15, "lesion": 0.05}
    assert report.geometry["spacing"][0] == {"min": 1.0, "median": 1.5, "max": 2.0}
    assert report.geometry["shape"][2] == {"min": 2.0, "median": 2.5, "max": 3.0}
    assert report.geometry["axcodes"] == {"RAS": 1, "LPS": 1}


def test_recommendation_follows_documented_formulas(crafted):
    rec = audit_dataset(crafted).recommendation
    f = {"bg": 58 / 67, "organ": 7 / 67, "lesion": 2 / 67}
    # lesion: boost sqrt(f_organ / f_lesion), present in 1 of 2 cases -> / 0.5
    assert rec.ratios == [1.0, 1.0, round(math.sqrt(f["organ"] / f["lesion"]) / 0.5, 2)]
    raw = [1.0, math.sqrt(f["bg"] / f["organ"]), math.sqrt(f["bg"] / f["lesion"])]
    assert rec.ce_weight == [round(w / np.mean(raw), 3) for w in raw]
    r = rec.ratios
    expected_share = (np.array(r) / sum(r) + np.array([0.5, 0.5, 0.0])) / 2  # c1 has every class, c2 no lesion
    np.testing.assert_allclose(rec.expected_share, expected_share, atol=1e-4)
    assert any(line.startswith("lesion:") and "1/2 cases" in line for line in rec.reasons)
    assert override_config(rec) == {"sampling": "classes", "ratios": rec.ratios, "ce_weight": rec.ce_weight}


def test_class_absent_everywhere_gets_zero_ratio_and_weight(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[1:3, 1:3, 1:3] = 1
    root = _write(tmp_path / "ds", {"c1": (a, np.eye(4))})
    rec = audit_dataset(root).recommendation
    assert rec.ratios[2] == 0.0 and rec.ce_weight[2] == 0.0
    assert any("lesion: absent from every case -> ratio 0" in line for line in rec.reasons)


def test_bad_labels_are_reported_with_file_and_values(tmp_path):
    good = np.zeros((4, 4, 4), np.uint8)
    good[1, 1, 1] = 1
    bad = np.zeros((4, 4, 4), np.float32)
    bad[0, 0, 0], bad[1, 1, 1], bad[2, 2, 2] = 7, 0.5, 2
    root = _write(tmp_path / "ds", {"ok": (good, np.eye(4)), "broken": (bad, np.eye(4))})
    report = audit_dataset(root)
    broken = str(root / "labelsTr" / "broken.nii.gz")
    assert len(report.errors) == 2
    assert any(broken in e and "non-integer label values, e.g. [0.5]" in e for e in report.errors)
    assert any(
        broken in e and "label values [7] (1 voxels) are not declared classes [0, 1, 2]" in e for e in report.errors
    )


def test_bundle_class_names_name_the_classes(tiny_dataset_3d):
    report = audit_dataset(tiny_dataset_3d, bundle=BUNDLE_3D)
    assert report.class_names == {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
    assert "train.json class_names" in report.class_source and len(report.cases) == 4  # training + validation
    assert report.errors == []


def _hippocampus_like(root: Path, labels: dict[str, str]) -> Path:
    a = np.zeros((6, 6, 4), np.uint8)
    a[1:3, 1:4, 1:3], a[3:5, 1:4, 1:3] = 1, 2
    return _write(root, {"h1": (a, np.eye(4))}, labels=labels)


def test_bundle_classes_that_differ_from_dataset_labels_are_an_error_with_the_fix(tmp_path, capsys):
    root = _hippocampus_like(tmp_path / "ds", {"0": "background", "1": "Anterior", "2": "Posterior"})
    with pytest.raises(ClassNamesError) as info:
        audit_dataset(root, bundle=BUNDLE_3D)
    msg = str(info.value)
    assert "train.json class_names: 4 classes ['background', 'organ', 'vessel', 'lesion'], but" in msg
    assert "'labels' declare 3: ['background', 'Anterior', 'Posterior']" in msg
    assert f"python -m pipeline plan {root} --bundle {BUNDLE_3D} --out plan.json" in msg and "--class_names" in msg
    assert main(["audit", str(root), "--bundle", str(BUNDLE_3D), "--out", str(tmp_path / "out")]) == 1
    assert "audit: " in capsys.readouterr().out and not (tmp_path / "out").exists()  # no audit with wrong names
    same = ["BACKGROUND", "anterior", "posterior"]  # names compare case-insensitively
    report = audit_dataset(root, bundle=BUNDLE_3D, overrides={"class_names": same})
    assert report.class_names == {0: "BACKGROUND", 1: "anterior", 2: "posterior"} and report.errors == []
    assert "--set class_names" in report.class_source
    with pytest.raises(ClassNamesError, match=r"2 classes \['background', 'posterior'\]"):
        audit_dataset(root, class_names={0: "background", 1: "posterior"})


def test_without_a_bundle_the_dataset_labels_name_the_classes(tmp_path):
    report = audit_dataset(_hippocampus_like(tmp_path / "ds", {"0": "background", "1": "Anterior", "2": "Posterior"}))
    assert [r["name"] for r in report.classes] == ["background", "Anterior", "Posterior"]
    assert report.recommendation is not None and len(report.recommendation.ratios) == 3


def test_2d_labels_report_mm2(tmp_path):
    a = np.zeros((6, 6), np.uint8)
    a[1:3, 1:3] = 2
    report = audit_dataset(_write(tmp_path / "ds", {"s1": (a, np.diag([0.5, 0.5, 1.0, 1.0]))}))
    assert report.classes[2]["smallest"] == {"voxels": 4, "mm2": 1.0, "case": "s1"}
    assert report.classes[2]["fraction"] == pytest.approx(4 / 36)


def test_write_audit_files(crafted, tmp_path):
    paths = write_audit(audit_dataset(crafted), tmp_path / "out")
    data = json.loads(paths["json"].read_text())
    assert data["classes"][2]["cases_absent"] == ["c2"] and data["recommendation"]["ratios"][0] == 1.0
    assert "| 2 lesion | 2.985% | 1/2 | c2 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_command_writes_override_usable_as_args_file(crafted, tmp_path, capsys):
    override = tmp_path / "override.json"
    assert main(["audit", str(crafted), "--out", str(tmp_path / "out"), "--write-override", str(override)]) == 0
    out = capsys.readouterr().out
    assert "## Recommendation" in out and "--args_file" in out
    values = json.loads(override.read_text())
    # the same code path as `python -m monai.bundle run training --args_file FILE ...`
    from monai.bundle import create_workflow

    configs = BUNDLE_3D / "configs"
    wf = create_workflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        args_file=str(override),
        bundle_root=str(tmp_path / "b"),
        dataset_dir=str(crafted),
    )
    assert wf.parser.get_parsed_content("ratios") == values["ratios"]
    assert wf.parser.get_parsed_content("loss").cross_entropy.weight.tolist() == pytest.approx(values["ce_weight"])


def test_command_fails_on_bad_labels(tmp_path, capsys):
    bad = np.full((3, 3, 3), 9, np.uint8)
    root = _write(tmp_path / "ds", {"x": (bad, np.eye(4))})
    assert main(["audit", str(root), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "labelsTr/x.nii.gz: label values [9]" in out and "1 problem(s) found" in out


def test_command_reads_2d_rgb_masks_with_the_2d_bundle(tmp_path, capsys):
    root = rgb_dataset_2d(tmp_path / "ds")
    out = tmp_path / "out"
    assert main(["audit", str(root), "--bundle", str(BUNDLE_2D), "--out", str(out)]) == 0
    assert "| 0 matrix |" in capsys.readouterr().out
    data = json.loads((out / "audit.json").read_text())
    # the colours map to the classes the scenes were drawn with (make_site_2d: site B, case i has seed 500 + i)
    truth = sum(np.bincount(make_case_2d(SITES_2D["B"], 500 + i)[1].ravel(), minlength=3) for i in range(3))
    assert [c["name"] for c in data["classes"]] == ["matrix", "grain", "pore"]
    assert [c["voxels"] for c in data["classes"]] == truth.tolist()
    assert data["errors"] == [] and data["cases"][0]["shape"] == [128, 100]
    assert any("dataset.json" in n and "the bundle sets no label_colors" in n for n in data["notes"])
    mask = root / "labelsTr" / "caseB_000.png"
    rgb = np.asarray(Image.open(mask)).copy()
    rgb[0, 0] = [9, 9, 9]
    Image.fromarray(rgb).save(mask)
    assert main(["audit", str(root), "--bundle", str(BUNDLE_2D), "--out", str(out)]) == 1
    message = f"{mask}: cannot read label (1 pixel(s) have colours not in 'label_colors': [9, 9, 9] (1 px, first"
    assert message in capsys.readouterr().out


def _no_spacing(path: Path) -> None:
    """pixdim (0, 1, 1) with qform_code = sform_code = 0, written past nibabel (which "fixes" it on save)."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:92] = struct.pack("<3f", 0.0, 1.0, 1.0)
    raw[252:256] = struct.pack("<2h", 0, 0)
    path.write_bytes(gzip.compress(bytes(raw)))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: (r / "imagesTr" / "x.nii.gz").write_text("not an image"), r"imagesTr/x.nii.gz: cannot read image"),
        (
            lambda r: _cut(r / "imagesTr" / "x.nii.gz"),
            r"imagesTr/x.nii.gz: cannot read image \(truncated file: the gzip",
        ),
        (
            lambda r: _cut(r / "labelsTr" / "x.nii.gz"),
            r"labelsTr/x.nii.gz: cannot read label \(truncated file: the gzip",
        ),
        (lambda r: (r / "labelsTr" / "x.nii.gz").write_bytes(b""), r"labelsTr/x.nii.gz: cannot read label \(trunc"),
        (lambda r: _no_spacing(r / "labelsTr" / "x.nii.gz"), r"labelsTr/x.nii.gz: cannot read label \(pixdim \[0.0,"),
    ],
)
def test_command_names_an_unreadable_or_truncated_image_or_label_in_one_line(tmp_path, capsys, damage, message):
    big = np.zeros((32, 32, 16), np.uint8)
    big[4:20, 4:20, 2:10] = 1
    big[8:10, 8:10, 4:6] = 2
    root = _write(tmp_path / "ds", {"x": (big, np.eye(4)), "y": (big, np.eye(4))})
    damage(root)
    assert main(["audit", str(root), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if re.search(message, ln)]
    assert "Fix: " in line and "Traceback" not in out and "1 problem(s) found" in out

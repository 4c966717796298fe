from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.data.datalist import (
    DatalistError,
    case_id,
    list_images,
    load_datalist,
    load_split,
    pair_folders,
    split_datalist,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a_001.nii.gz", "a_001"), ("liver_003_0000.nii.gz", "liver_003"), ("x.nii", "x"), ("slice.png", "slice")],
)
def test_case_id(name, expected):
    assert case_id(f"/data/{name}") == expected


def test_pair_folders_pairs_by_case_id(tmp_path):
    for c in ("b", "a"):
        _touch(tmp_path / "imagesTr" / f"{c}_0000.nii.gz")
        _touch(tmp_path / "labelsTr" / f"{c}.nii.gz")
    items = load_datalist(tmp_path, "training")
    assert [case_id(i["image"]) for i in items] == ["a", "b"]
    assert all(Path(i["label"]).parent.name == "labelsTr" for i in items)


def test_unpaired_case_is_named(tmp_path):
    _touch(tmp_path / "imagesTr" / "a.nii.gz")
    _touch(tmp_path / "imagesTr" / "b.nii.gz")
    _touch(tmp_path / "labelsTr" / "a.nii.gz")
    with pytest.raises(DatalistError, match=r"images without label \['b'\]"):
        pair_folders(tmp_path / "imagesTr", tmp_path / "labelsTr")


def test_duplicate_case_id_is_named(tmp_path):
    _touch(tmp_path / "imagesTr" / "a.nii.gz")
    _touch(tmp_path / "imagesTr" / "a.nii")
    with pytest.raises(DatalistError, match="Duplicate case id 'a'"):
        pair_folders(tmp_path / "imagesTr")


def test_dataset_json_relative_paths_and_missing_file(tmp_path):
    _touch(tmp_path / "imagesTr" / "a.nii.gz")
    _touch(tmp_path / "labelsTr" / "a.nii.gz")
    meta = {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    items = load_datalist(tmp_path, "training")
    assert items[0]["image"] == str((tmp_path / "imagesTr" / "a.nii.gz").resolve())
    meta["training"].append({"image": "./imagesTr/missing.nii.gz", "label": "./labelsTr/a.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatalistError, match=r"training\[1\]: image file .*missing.nii.gz' does not exist"):
        load_datalist(tmp_path, "training")


def test_missing_section_lists_present_ones(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DatalistError, match=r"no 'test' section; it has \['training'\]"):
        load_datalist(tmp_path, "test")


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DatalistError, match="does not exist; pass --dataset_dir"):
        load_datalist(tmp_path / "nope")


def test_split_is_deterministic_and_disjoint():
    items = [{"image": str(i)} for i in range(10)]
    tr1, va1 = split_datalist(items, 0.2, seed=1)
    tr2, va2 = split_datalist(items, 0.2, seed=1)
    assert tr1 == tr2 and va1 == va2
    assert len(va1) == 2 and len(tr1) == 8
    assert not {i["image"] for i in tr1} & {i["image"] for i in va1}


def test_load_split_uses_validation_section(tiny_dataset_3d):
    tr = load_split(tiny_dataset_3d, "training")
    va = load_split(tiny_dataset_3d, "validation")
    te = load_split(tiny_dataset_3d, "test")
    assert (len(tr), len(va), len(te)) == (3, 1, 1)


def test_load_split_holds_out_when_no_validation(tmp_path):
    for c in "abcde":
        _touch(tmp_path / "imagesTr" / f"{c}.nii.gz")
        _touch(tmp_path / "labelsTr" / f"{c}.nii.gz")
    tr = load_split(tmp_path, "training", val_fraction=0.2)
    va = load_split(tmp_path, "validation", val_fraction=0.2)
    assert len(tr) == 4 and len(va) == 1
    assert not {i["image"] for i in tr} & {i["image"] for i in va}


def test_list_images_recursive_skips_hidden(tmp_path):
    _touch(tmp_path / "p1" / "s1" / "ct.nii.gz")
    _touch(tmp_path / "p2" / "ct.nii")
    _touch(tmp_path / ".cache" / "x.nii.gz")
    _touch(tmp_path / "notes.txt")
    assert [Path(i["image"]).relative_to(tmp_path.resolve()).as_posix() for i in list_images(tmp_path)] == [
        "p1/s1/ct.nii.gz",
        "p2/ct.nii",
    ]
    empty = _touch(tmp_path / "e" / "x.txt").parent
    with pytest.raises(DatalistError, match="holds no image files"):
        list_images(empty)


def test_scan_datalist_collects_every_problem(tmp_path):
    from pipeline.data.datalist import scan_datalist

    for c in ("a", "b", "c"):
        _touch(tmp_path / "imagesTr" / f"{c}.nii.gz")
    _touch(tmp_path / "labelsTr" / "a.nii.gz")
    _touch(tmp_path / "labelsTr" / "z.nii.gz")
    lists, problems = scan_datalist(tmp_path)
    assert [Path(i["image"]).name for i in lists["training"]] == ["a.nii.gz"]
    assert sorted((p.kind, Path(p.where).name) for p in problems) == [
        ("missing_file", "b.nii.gz"),
        ("missing_file", "c.nii.gz"),
        ("missing_file", "z.nii.gz"),
    ]
    meta = {
        "training": [{"image": "x1.nii", "label": "y1.nii"}, {"image": "x2.nii"}],
        "validation": ["imagesTr/a.nii.gz"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    lists, problems = scan_datalist(tmp_path)
    assert sorted(p.kind for p in problems) == ["datalist", "datalist", "empty_dataset", "missing_file", "missing_file"]


def test_empty_dataset_folder_says_what_is_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(
        DatalistError, match=r"holds neither a dataset.json nor an imagesTr/ folder \(found \['notes.txt'\]\)"
    ):
        load_datalist(tmp_path, "training")


def test_list_images_under_a_hidden_parent_folder(tmp_path):
    archive = tmp_path / ".cache" / "archive"
    _touch(archive / "p1" / "ct.nii.gz")
    _touch(archive / ".tmp" / "partial.nii.gz")
    found = [Path(i["image"]).name for i in list_images(archive)]
    assert found == ["ct.nii.gz"]

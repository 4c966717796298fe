"""pipeline.evaluation.metrics against straightforward numpy computations on crafted small volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.evaluation.metrics import COLUMNS, as_onehot, case_metrics, read_case_csv, summarize, write_evaluation

NAMES = {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}
SHAPE = (16, 16, 8)


def _by_class(rows):
    return {r["class"]: r for r in rows}


def _counts(pred: np.ndarray, label: np.ndarray, c: int) -> tuple[int, int, int, int]:
    p, y = pred == c, label == c
    return int((p & y).sum()), int((p & ~y).sum()), int((~p & y).sum()), int((~p & ~y).sum())


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: edge voxels (mask minus its erosion), nearest edge voxel of the other mask, in mm."""
    sp = np.asarray(spacing, dtype=float)
    ea = np.argwhere(a & ~ndimage.binary_erosion(a)) * sp
    eb = np.argwhere(b & ~ndimage.binary_erosion(b)) * sp
    d = np.sqrt(((ea[:, None, :] - eb[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.min(0)


@pytest.fixture
def crafted() -> tuple[np.ndarray, np.ndarray]:
    """organ overlaps partly, vessel missed, lesion predicted but absent in the reference."""
    label = np.zeros(SHAPE, dtype=np.int64)
    pred = np.zeros(SHAPE, dtype=np.int64)
    label[2:8, 2:8, 1:5] = 1
    pred[3:9, 2:8, 1:6] = 1
    label[10:14, 10:12, 2:4] = 2
    pred[12:14, 1:3, 6:8] = 3
    return pred, label


def test_scores_match_hand_computed_counts(crafted):
    pred, label = crafted
    rows = _by_class(case_metrics(pred[None], label[None], NAMES, case_id="c1"))
    assert list(rows) == ["organ", "vessel", "lesion"]  # background left out by default
    tp, fp, fn, tn = _counts(pred, label, 1)
    organ = rows["organ"]
    assert (organ["tp"], organ["fp"], organ["fn"], organ["tn"]) == (tp, fp, fn, tn)
    assert organ["status"] == "ok" and organ["case"] == "c1"
    assert organ["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert organ["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert organ["precision"] == pytest.approx(tp / (tp + fp))
    assert organ["recall"] == pytest.approx(tp / (tp + fn))
    assert organ["specificity"] == pytest.approx(tn / (tn + fp))
    assert organ["ref_volume"] == (label == 1).sum() and organ["volume_unit"] == "voxels"
    assert set(organ) == set(COLUMNS)


def test_onehot_input_equals_label_map(crafted):
    pred, label = crafted
    oh_pred = np.stack([pred == c for c in range(4)]).astype(np.float32)
    oh_label = np.stack([label == c for c in range(4)]).astype(np.float32)
    assert case_metrics(oh_pred, oh_label, NAMES) == case_metrics(pred[None], label[None], NAMES)


def test_edge_cases_missed_fp_only_both_empty(crafted):
    pred, label = crafted
    names = {**NAMES, 4: "cyst"}  # absent in both
    rows = _by_class(case_metrics(pred[None], label[None], names))
    missed, fp_only, both = rows["vessel"], rows["lesion"], rows["cyst"]
    assert missed["status"] == "missed"
    assert missed["dice"] == 0.0 and missed["iou"] == 0.0 and missed["recall"] == 0.0
    assert math.isinf(missed["hd95"]) and math.isinf(missed["asd"])  # not computable, not NaN, not dropped
    assert missed["fn"] == (label == 2).sum()
    assert fp_only["status"] == "fp_only"
    assert fp_only["dice"] == 0.0 and fp_only["precision"] == 0.0 and fp_only["fp"] == (pred == 3).sum()
    assert math.isinf(fp_only["hd95"])
    assert both["status"] == "both_empty"
    assert all(both[m] is None for m in ("dice", "iou", "precision", "recall", "specificity", "hd95", "asd"))

    summary = summarize(case_metrics(pred[None], label[None], names))
    cyst, vessel = summary["classes"]["cyst"], summary["classes"]["vessel"]
    assert cyst["n_excluded"] == 1 and cyst["metrics"]["dice"]["n"] == 0 and cyst["metrics"]["dice"]["mean"] is None
    assert vessel["metrics"]["dice"]["mean"] == 0.0 and vessel["metrics"]["dice"]["n"] == 1
    assert vessel["metrics"]["hd95"]["n_not_computable"] == 1 and vessel["metrics"]["hd95"]["mean"] is None
    assert summary["macro"]["dice"] == pytest.approx(np.mean([rows["organ"]["dice"], 0.0, 0.0]))  # cyst not in it


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [(None, 3.0), ((1.0, 1.0, 1.0), 3.0), ((2.0, 1.0, 1.0), 6.0), ((1.0, 2.0, 3.0), 3.0)],
)
def test_distances_between_parallel_slabs(spacing, expected):
    """Two one-voxel slabs 3 voxels apart along axis 0: every surface distance is 3 x spacing[0]."""
    label, pred = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    label[5], pred[8] = 1, 1
    (row,) = case_metrics(pred[None], label[None], {0: "bg", 1: "slab"}, spacing=spacing)
    assert row["hd95"] == pytest.approx(expected)
    assert row["asd"] == pytest.approx(expected)
    assert row["distance_unit"] == ("voxels" if spacing is None else "mm")


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.5, 3.0)])
def test_distances_between_offset_cubes_match_brute_force(spacing):
    label, pred = np.zeros(SHAPE, dtype=bool), np.zeros(SHAPE, dtype=bool)
    label[3:8, 3:8, 1:6] = True
    pred[5:10, 4:9, 2:7] = True  # offset (2, 1, 1) voxels
    (row,) = case_metrics(pred[None].astype(int), label[None].astype(int), {1: "cube"}, spacing=spacing)
    d_pl, d_lp = _surface_distances(pred, label, spacing)
    hd95 = max(np.percentile(d_pl, 95), np.percentile(d_lp, 95))
    asd = np.concatenate([d_pl, d_lp]).mean()
    assert row["hd95"] == pytest.approx(hd95, rel=1e-5)
    assert row["asd"] == pytest.approx(asd, rel=1e-5)
    voxel_ml = float(np.prod(spacing)) / 1000
    assert row["ref_volume"] == pytest.approx(label.sum() * voxel_ml) and row["volume_unit"] == "mL"


def test_anisotropic_spacing_scales_distance_along_its_axis():
    label, pred = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    label[4:8, 4:8, 2:6] = 1
    pred[6:10, 4:8, 2:6] = 1  # shifted 2 voxels along axis 0 only
    iso = case_metrics(pred[None], label[None], {1: "cube"}, spacing=(1, 1, 1))[0]
    along = case_metrics(pred[None], label[None], {1: "cube"}, spacing=(2.5, 1, 1))[0]
    across = case_metrics(pred[None], label[None], {1: "cube"}, spacing=(1, 1, 2.5))[0]
    assert iso["hd95"] == pytest.approx(2.0)
    assert along["hd95"] == pytest.approx(5.0)
    assert across["hd95"] == pytest.approx(2.0)


def test_macro_and_micro_differ_on_crafted_two_cases():
    """organ: big and perfect in case a, small and missed in case b; vessel: half found in both."""
    names = {0: "background", 1: "organ", 2: "vessel"}
    la, pa = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    la[0:4, 0:4, 0:4] = 1  # 64 voxels, predicted exactly
    pa[0:4, 0:4, 0:4] = 1
    la[10:12, 10:12, 0:2] = 2  # 8 voxels, 4 found, 4 false positives
    pa[10:12, 10:12, 0:1] = 2
    pa[14:16, 14:16, 7:8] = 2
    lb, pb = np.zeros(SHAPE, dtype=np.int64), np.zeros(SHAPE, dtype=np.int64)
    lb[5, 5, 0:4] = 1  # 4 voxels, missed
    lb[10:12, 10:12, 0:2] = 2  # 8 voxels, 4 found, no FP
    pb[10:12, 10:12, 0:1] = 2
    rows = case_metrics(pa[None], la[None], names, case_id="a") + case_metrics(pb[None], lb[None], names, case_id="b")
    s = summarize(rows)
    organ, vessel = s["classes"]["organ"], s["classes"]["vessel"]
    # per-class case means: organ (1 + 0) / 2; vessel dice a = 2*4/(8+4+4) = 0.5, b = 8/(8+0+4) = 2/3
    assert organ["metrics"]["dice"]["mean"] == pytest.approx(0.5)
    assert organ["metrics"]["dice"]["std"] == pytest.approx(0.5)
    assert organ["metrics"]["dice"]["median"] == pytest.approx(0.5)
    assert vessel["metrics"]["dice"]["mean"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert s["macro"]["dice"] == pytest.approx((0.5 + (0.5 + 2 / 3) / 2) / 2)
    # pooled per class: organ TP 64, FN 4 -> 128/132; vessel TP 8, FP 4, FN 8 -> 16/28
    assert organ["pooled"]["dice"] == pytest.approx(128 / 132)
    assert vessel["pooled"]["dice"] == pytest.approx(16 / 28)
    # micro over everything: TP 72, FP 4, FN 12
    micro = s["micro"]
    assert micro["dice"] == pytest.approx(144 / (144 + 4 + 12))
    assert micro["iou"] == pytest.approx(72 / (72 + 4 + 12))
    assert micro["precision"] == pytest.approx(72 / 76)
    assert micro["recall"] == pytest.approx(72 / 84)
    assert s["macro"]["recall"] == pytest.approx(((1 + 0) / 2 + (0.5 + 0.5) / 2) / 2)
    assert s["n_cases"] == 2 and organ["status"]["missed"] == 1


def test_write_evaluation_round_trip(tmp_path, crafted):
    pred, label = crafted
    rows = case_metrics(pred[None], label[None], NAMES, spacing=(1, 1, 2), case_id="c1")
    paths = write_evaluation(rows, tmp_path / "eval")
    back = read_case_csv(paths["csv"])
    assert [r["class"] for r in back] == ["organ", "vessel", "lesion"]
    assert back[0]["dice"] == pytest.approx(rows[0]["dice"], rel=1e-5)
    assert math.isinf(back[1]["hd95"]) and back[1]["status"] == "missed"
    summary = json.loads(paths["json"].read_text())
    assert summary["classes"]["vessel"]["metrics"]["hd95"]["n_not_computable"] == 1
    assert "| organ |" in paths["md"].read_text() and "**micro**" in paths["md"].read_text()
    assert not list((tmp_path / "eval").glob("*.tmp"))


def test_errors_name_the_problem():
    lab = np.zeros((1, *SHAPE), dtype=np.int64)
    with pytest.raises(ValueError, match=r"case 'case' pred contains label values \[7\] outside 0..3"):
        case_metrics(lab + 7, lab, NAMES)
    with pytest.raises(ValueError, match="spatial shapes differ"):
        case_metrics(lab[..., :4], lab, NAMES)
    with pytest.raises(ValueError, match="'spacing' must have 3 positive entries"):
        case_metrics(lab, lab, NAMES, spacing=(1, 1))
    with pytest.raises(ValueError, match="input has 2 channels; expected 1"):
        as_onehot(np.zeros((2, *SHAPE)), 4)

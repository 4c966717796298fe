"""pipeline.handlers.metrics: metric handlers by class name, the per-case writer and TensorBoard logging."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.handlers import TensorBoardStatsHandler
from monai.transforms import AsDiscreted, Compose
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from pipeline.data.datalist import case_id
from pipeline.evaluation.cases import normalize_class_names
from pipeline.handlers.images import ValidationImageLogger
from pipeline.handlers.metrics import CaseMetricsWriter, PerClassMetric

CLASS_NAMES = ["background", "organ", "vessel", "lesion"]
SHAPE = (16, 16, 8)
AFFINE = torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64))


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(case id, prediction, label) label maps.

    case_a: organ exact (Dice 1), vessel half found (Dice 2/3), lesion absent in both.
    case_b: organ shifted 2 voxels on axis 0 (Dice 1/2, IoU 1/3), vessel missed, lesion false positive.
    """
    la, pa = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    la[2:6, 2:6, 2:6] = pa[2:6, 2:6, 2:6] = 1
    la[10:14, 10:12, 0:2] = 2
    pa[10:12, 10:12, 0:2] = 2
    lb, pb = np.zeros(SHAPE, np.int64), np.zeros(SHAPE, np.int64)
    lb[2:6, 2:6, 2:6] = 1
    pb[4:8, 2:6, 2:6] = 1
    lb[10:14, 10:12, 0:2] = 2
    pb[14:16, 14:16, 6:8] = 3
    return [("case_a", pa, la), ("case_b", pb, lb)]


def _items() -> list[dict[str, MetaTensor]]:
    """The 'image' is the one-hot prediction, so an Identity network predicts exactly it."""
    items = []
    for case, pred, label in _cases():
        meta = {"filename_or_obj": f"/data/imagesTr/{case}.nii.gz"}
        onehot = np.stack([pred == c for c in range(4)]).astype(np.float32)
        items.append(
            {
                "image": MetaTensor(torch.from_numpy(onehot), affine=AFFINE, meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(label[None]).float(), affine=AFFINE, meta=dict(meta)),
            }
        )
    return items


def _metric(**kw) -> PerClassMetric:
    return PerClassMetric(class_names=CLASS_NAMES, **kw)


@pytest.fixture
def evaluated(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path / "tb"))
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(_items(), batch_size=2),
        network=torch.nn.Identity(),
        postprocessing=Compose(
            [AsDiscreted(keys="pred", argmax=True, to_onehot=4), AsDiscreted(keys="label", to_onehot=4)]
        ),
        key_val_metric={"val_mean_dice": _metric()},
        additional_metrics={
            "val_dice_per_class": _metric(reduction="mean_batch"),
            "val_iou_per_class": _metric(metric="iou", reduction="mean_batch"),
            "val_organ_dice": _metric(reduction="organ"),
        },
        val_handlers=[
            CaseMetricsWriter(tmp_path / "eval", CLASS_NAMES),
            TensorBoardStatsHandler(summary_writer=writer, iteration_log=False, output_transform=lambda x: None),
            ValidationImageLogger(summary_writer=writer, max_cases=1),
        ],
    )
    evaluator.run()
    writer.close()
    return evaluator, tmp_path


def test_per_class_metrics_by_name(evaluated):
    evaluator, _ = evaluated
    m = evaluator.state.metrics
    assert m["val/dice/organ"] == pytest.approx(0.75)
    assert m["val/dice/vessel"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["val/dice/lesion"] == pytest.approx(0.0)  # case_a excluded (absent in both), case_b FP -> 0
    assert m["val/iou/organ"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["val/iou/vessel"] == pytest.approx((0.5 + 0) / 2)
    assert isinstance(m["val_mean_dice"], float)
    assert m["val_mean_dice"] == pytest.approx((0.75 + 1 / 3 + 0) / 3)
    assert m["val_organ_dice"] == pytest.approx(0.75)
    assert "val/dice/background" not in m
    assert evaluator.state.best_metric == pytest.approx(m["val_mean_dice"])


def test_tensorboard_has_per_class_scalars_by_name(evaluated):
    _, tmp_path = evaluated
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    expected = {f"val/{m}/{c}" for m in ("dice", "iou") for c in ("organ", "vessel", "lesion")} | {"val_mean_dice"}
    assert expected <= scalars
    assert acc.Scalars("val/dice/organ")[0].value == pytest.approx(0.75)
    assert acc.Tags()["images"] == ["val/images/case_a"]


def test_writer_tables_after_evaluator_run(evaluated):
    _, tmp_path = evaluated
    out = tmp_path / "eval"
    with open(out / "metrics_per_case.csv", newline="") as f:
        rows = {(r["case"], r["class"]): r for r in csv.DictReader(f)}
    assert len(rows) == 6
    assert rows[("case_a", "organ")]["dice"] == "1" and rows[("case_a", "organ")]["status"] == "ok"
    assert float(rows[("case_a", "vessel")]["dice"]) == pytest.approx(2 / 3, rel=1e-5)
    assert rows[("case_a", "lesion")]["status"] == "both_empty" and rows[("case_a", "lesion")]["dice"] == ""
    organ_b = rows[("case_b", "organ")]
    assert float(organ_b["dice"]) == pytest.approx(0.5) and float(organ_b["iou"]) == pytest.approx(1 / 3)
    assert float(organ_b["hd95"]) == pytest.approx(4.0)  # 2 voxels x 2 mm from the affine
    assert organ_b["distance_unit"] == "mm" and organ_b["volume_unit"] == "mL"
    assert float(organ_b["ref_volume"]) == pytest.approx(64 * 2 / 1000)
    assert rows[("case_b", "vessel")]["status"] == "missed" and rows[("case_b", "vessel")]["hd95"] == "inf"
    assert rows[("case_b", "lesion")]["status"] == "fp_only"

    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2
    lesion = summary["classes"]["lesion"]
    assert lesion["n_excluded"] == 1 and lesion["metrics"]["dice"]["n"] == 1
    assert summary["classes"]["organ"]["metrics"]["dice"]["mean"] == pytest.approx(0.75)
    assert summary["macro"]["dice"] == pytest.approx((0.75 + 1 / 3 + 0) / 3)
    # micro: organ TP 64+32, FP 32, FN 32; vessel TP 8, FN 8+16; lesion FP 8
    assert summary["micro"]["dice"] == pytest.approx(2 * 104 / (2 * 104 + 40 + 56))
    assert "| vessel |" in (out / "summary.md").read_text()
    sources = json.loads((out / "cases.json").read_text())
    assert sources["case_b"]["image"] == "/data/imagesTr/case_b.nii.gz"


def test_writer_on_bare_engine_with_label_maps_and_batched_output(tmp_path):
    """Undecollated dict output with (B, 1, ...) label maps; no meta -> fallback ids and voxel units."""
    preds = torch.stack([torch.from_numpy(p[None]) for _, p, _ in _cases()])
    labels = torch.stack([torch.from_numpy(lab[None]) for _, _, lab in _cases()])
    engine = Engine(lambda e, batch: batch)
    writer = CaseMetricsWriter(tmp_path, {"1": "organ", "2": "vessel", "3": "lesion"})
    writer.attach(engine)
    engine.run([{"pred": preds, "label": labels}], max_epochs=1)
    assert [r["case"] for r in writer.rows][::3] == ["case_0000", "case_0001"]
    assert writer.rows[0]["dice"] == 1.0 and writer.rows[0]["distance_unit"] == "voxels"
    assert writer.rows[3]["hd95"] == pytest.approx(2.0)
    assert (tmp_path / "summary.md").is_file()
    engine.run([{"pred": preds[:1], "label": labels[:1]}], max_epochs=1)  # a new run starts a fresh table
    assert len(writer.rows) == 3


def test_validation_in_init():
    with pytest.raises(ValueError, match="'reduction' must be 'mean', 'mean_batch' or a scored class name"):
        _metric(reduction="liver")
    with pytest.raises(ValueError, match="'metric' must be 'dice' or 'iou'"):
        _metric(metric="hd")
    with pytest.raises(ValueError, match="unique names"):
        normalize_class_names(["a", "a"])
    assert normalize_class_names({"0": "bg", "2": "x"}) == {0: "bg", 2: "x"}


@pytest.mark.parametrize(
    ("path", "postfix", "expected"),
    [
        ("/d/case_1.nii.gz", "", "case_1"),
        ("/d/case_1/case_1_seg.nii.gz", "seg", "case_1"),
        ("rel/c.2.nii", "", "c.2"),
        ("/dicom/series_7/", "", "series_7"),
        ("/d/case_0001_seg.png", "seg", "case_0001"),
        ("/d/nuclei_0042.jpeg", "", "nuclei_0042"),
    ],
)
def test_case_id_of_predictions(path, postfix, expected):
    assert case_id(path, postfix, channel_suffix=False) == expected
    if not expected[-4:].isdigit():
        assert case_id(path, postfix) == expected  # the same id as the datalist's


def test_case_id_strips_the_nnunet_channel_suffix_of_images():
    assert case_id("/d/imagesTr/liver_003_0000.nii.gz") == "liver_003"
    assert case_id("/d/imagesTr/liver_003_0000.nii.gz", channel_suffix=False) == "liver_003_0000"

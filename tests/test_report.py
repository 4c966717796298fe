"""pipeline.evaluation.report plots and the ``evaluate`` / ``report`` commands on tiny NIfTI files."""

from __future__ import annotations

import argparse
import csv
import json

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread
from torch.utils.tensorboard import SummaryWriter

from pipeline.commands import evaluate as evaluate_cmd
from pipeline.commands import report as report_cmd
from pipeline.evaluation.metrics import case_metrics
from pipeline.evaluation.report import (
    best_and_worst,
    build_report,
    compare_markdown,
    plot_boxplot,
    plot_overlay,
    read_scalars,
)

SHAPE = (16, 16, 8)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG_SIGNATURE and imread(str(path)).ndim == 3


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def _save(arr: np.ndarray, path, zooms=(0.8, 0.8, 2.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([*zooms, 1.0])), str(path))


@pytest.fixture
def dataset(tmp_path):
    """Two cases: labels, images, and predictions saved MONAI-style as <case>/<case>_seg.nii.gz."""
    rng = np.random.default_rng(0)
    for i, shift in enumerate((0, 2)):
        case = f"case_{i}"
        label = np.zeros(SHAPE, np.uint8)
        label[3:9, 3:9, 2:6] = 1
        label[11:14, 11:13, 1:3] = 2
        pred = np.zeros(SHAPE, np.uint8)
        pred[3 + shift : 9 + shift, 3:9, 2:6] = 1
        if i == 0:
            pred[11:14, 11:13, 1:3] = 2  # vessel found in case_0, missed in case_1
        _save(label, tmp_path / "labelsTr" / f"{case}.nii.gz")
        _save((label * 50 + rng.normal(0, 5, SHAPE)).astype(np.float32), tmp_path / "imagesTr" / f"{case}.nii.gz")
        _save(pred, tmp_path / "preds" / case / f"{case}_seg.nii.gz")
    entries = [{"image": f"imagesTr/case_{i}.nii.gz", "label": f"labelsTr/case_{i}.nii.gz"} for i in range(2)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    return tmp_path


def _evaluate(dataset, *extra: str) -> int:
    argv = ["--pred-dir", str(dataset / "preds"), "--out", str(dataset / "eval"), *extra]
    return evaluate_cmd.run(_parse(evaluate_cmd, argv))


def test_evaluate_command_pairs_and_writes(dataset, capsys):
    names = json.dumps({"1": "organ", "2": "vessel"})
    assert _evaluate(dataset, "--dataset-json", str(dataset / "dataset.json"), "--class-names", names) == 0
    out = capsys.readouterr().out
    assert "organ" in out and "micro Dice" in out
    with open(dataset / "eval" / "metrics_per_case.csv", newline="") as f:
        rows = {(r["case"], r["class"]): r for r in csv.DictReader(f)}
    assert set(rows) == {(c, k) for c in ("case_0", "case_1") for k in ("organ", "vessel")}
    assert float(rows[("case_0", "organ")]["dice"]) == 1.0
    assert rows[("case_1", "vessel")]["status"] == "missed"
    assert float(rows[("case_1", "organ")]["hd95"]) == pytest.approx(2 * 0.8)  # 2 voxels x 0.8 mm
    assert float(rows[("case_0", "organ")]["ref_volume"]) == pytest.approx(144 * 0.8 * 0.8 * 2 / 1000)
    sources = json.loads((dataset / "eval" / "cases.json").read_text())
    assert sources["case_1"]["image"].endswith("imagesTr/case_1.nii.gz")


def test_evaluate_class_names_from_bundle_metadata(dataset, capsys):
    channel_def = {"0": "background", "1": "liver", "2": "portal vein"}
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}
    (dataset / "bundle" / "configs").mkdir(parents=True)
    (dataset / "bundle" / "configs" / "metadata.json").write_text(json.dumps(meta))
    assert _evaluate(dataset, "--label-dir", str(dataset / "labelsTr"), "--bundle", str(dataset / "bundle")) == 0
    assert "| portal vein |" in (dataset / "eval" / "summary.md").read_text()
    # class names that do not cover the label values: a clear error naming the case, exit code 1
    assert _evaluate(dataset, "--label-dir", str(dataset / "labelsTr"), "--class-names", '{"1": "liver"}') == 1
    err = capsys.readouterr().err
    assert "case 'case_0' pred contains label values [2] outside 0..1" in err


def test_evaluate_names_unpaired_files(dataset, capsys):
    _save(np.zeros(SHAPE, np.uint8), dataset / "labelsTr" / "case_9.nii.gz")
    assert _evaluate(dataset, "--label-dir", str(dataset / "labelsTr")) == 1
    captured = capsys.readouterr()
    assert "label without prediction" in captured.out and "case_9.nii.gz" in captured.out
    assert "--allow-unpaired" in captured.err
    assert _evaluate(dataset, "--label-dir", str(dataset / "labelsTr"), "--allow-unpaired") == 0
    assert "class_1" in (dataset / "eval" / "summary.md").read_text()  # named by value without --class-names


def test_report_command_builds_markdown_with_pngs(dataset, capsys):
    assert (
        _evaluate(dataset, "--dataset-json", str(dataset / "dataset.json"), "--class-names", '["bg","organ","vessel"]')
        == 0
    )
    run_dir = dataset / "run"
    writer = SummaryWriter(log_dir=str(run_dir))
    for step in range(1, 6):
        writer.add_scalar("train_loss", 1.0 / step, step)
        writer.add_scalar("val/dice/organ", 0.5 + 0.05 * step, step)
    writer.close()
    assert read_scalars(run_dir)["val/dice/organ"][-1] == (5, pytest.approx(0.75))

    md = dataset / "out" / "report.md"
    argv = [str(run_dir), "--eval-dir", str(dataset / "eval"), "--out", str(md), "--compare", f"a={dataset / 'eval'}"]
    assert report_cmd.run(_parse(report_cmd, argv)) == 0
    text = md.read_text()
    figs = dataset / "out" / "report_figures"
    expected = ["curves.png", "dice_boxplot.png", "overlay_organ_worst.png", "overlay_organ_best.png"]
    for name in expected + ["overlay_vessel_worst.png"]:
        assert _is_png(figs / name), name
        assert f"report_figures/{name}" in text
    assert "## Evaluation\n" in text and "| organ |" in text and "## Comparison" in text
    assert "wrote" in capsys.readouterr().out


def test_plots_direct(tmp_path):
    label = np.zeros((12, 10), np.int64)
    label[2:6, 2:6] = 1
    pred = np.roll(label, 1, axis=0)
    png = plot_overlay(np.random.default_rng(0).random((12, 10)), label, pred, tmp_path / "o.png", 1, "2d case")
    assert _is_png(png)
    with pytest.raises(ValueError, match="overlay arrays must share a shape"):
        plot_overlay(None, label, pred[:4], tmp_path / "bad.png", 1)
    rows = case_metrics(pred[None], label[None], {1: "organ"}, case_id="x") + case_metrics(
        label[None], label[None], {1: "organ"}, case_id="y"
    )
    assert _is_png(plot_boxplot(rows, tmp_path / "box.png"))
    worst, best = best_and_worst(rows)["organ"]
    assert (worst["case"], best["case"]) == ("x", "y")
    assert plot_boxplot([], tmp_path / "none.png") is None
    table = compare_markdown(
        {
            "transfer": {"classes": {"organ": {"metrics": {"dice": {"mean": 0.9}}}}, "macro": {"dice": 0.9}},
            "scratch": {"classes": {"organ": {"metrics": {"dice": {"mean": 0.7}}}}, "macro": {"dice": 0.7}},
        }
    )
    assert "| organ | **0.900** | 0.700 | transfer |" in table


def test_build_report_without_eval_or_scalars(tmp_path):
    md = build_report(tmp_path, out_md=tmp_path / "r.md")
    assert "_No scalars found._" in md.read_text()
    with pytest.raises(FileNotFoundError, match="no metrics_per_case.csv"):
        build_report(tmp_path, eval_dir=tmp_path)

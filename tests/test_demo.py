"""The 3D demo end to end, at a tiny budget: every step a user would type runs, and what it promises is on disk."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from pipeline.apps.demo import DemoSettings, run_demo

# coarse grid and small patches: the steps, not the accuracy, are under test
TINY = {"pixdim": [3.0, 3.0, 4.0], "patch_size": [32, 32, 32], "num_samples": 2, "batch_size": 1}


@pytest.mark.slow
def test_demo_runs_every_step_and_writes_its_promises(tmp_path):
    settings = DemoSettings(epochs_site_a=1, epochs_site_b=3, val_interval=1, overrides=TINY)
    summary = run_demo(tmp_path, settings)

    assert list(summary["times_s"]) == [
        "synth", "audit_site_A", "train_site_A", "evaluate_site_A", "keygen_site_A", "pack_site_A",
        "verify_at_site_B", "audit_site_B", "finetune_site_B", "scratch_site_B", "evaluate_eval_site_A_model_on_B",
        "evaluate_eval_finetuned_on_B", "evaluate_eval_scratch_on_B", "drift", "infer_site_B", "evaluate_masks_site_B",
    ]  # fmt: skip
    # the audit's recommendation reached the training command, for both sites
    override = json.loads((tmp_path / "audit_site_A" / "override.json").read_text())
    assert "--ratios" in (tmp_path / "logs" / "train_site_A.log").read_text().splitlines()[0]
    assert override["sampling"] == "classes" and len(override["ratios"]) == 4
    assert "--ce_weight" in (tmp_path / "logs" / "scratch_site_B.log").read_text().splitlines()[0]

    assert (tmp_path / "site_A_bundle.zip").is_file()
    assert "signed_by=" in (tmp_path / "logs" / "verify_at_site_B.log").read_text()
    assert set(summary["site_B"]) == {"site A model, no fine-tuning", "fine-tuned (staged)", "scratch"}
    assert set(summary["site_B"]["scratch"]["classes"]) == {"organ", "vessel", "lesion"}
    assert (tmp_path / "drift" / "drift.csv").is_file() and (tmp_path / "drift" / "drift.png").is_file()

    # one mask per site B test image, in that image's grid
    images = sorted((tmp_path / "data" / "site_B" / "imagesTs").glob("*.nii.gz"))
    assert len(summary["predictions"]) == len(images) == 2
    for image, rel in zip(images, summary["predictions"], strict=True):
        src, mask = nib.load(image), nib.load(tmp_path / rel)
        assert mask.shape == src.shape[:3] and (mask.affine == src.affine).all(), rel

    report = (tmp_path / "report.md").read_text()
    assert "## Did transfer beat scratch?" in report and "![drift](drift/drift.png)" in report
    assert json.loads((tmp_path / "demo_summary.json").read_text())["verdict"] == summary["verdict"]

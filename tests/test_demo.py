"""The 3D demo end to end, at a tiny budget: every step a user would type runs, and what it promises is on disk."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from pipeline.apps.demo import DemoSettings, plan_sources, run_demo

# coarse grid and small patches: the steps, not the accuracy, are under test
TINY = {"pixdim": [3.0, 3.0, 4.0], "patch_size": [32, 32, 32], "num_samples": 2, "batch_size": 1}


@pytest.mark.slow
def test_demo_runs_every_step_and_writes_its_promises(tmp_path):
    settings = DemoSettings(epochs_site_a=1, epochs_site_b=3, val_interval=1, overrides=TINY)
    summary = run_demo(tmp_path, settings)

    assert list(summary["times_s"]) == [
        "synth", "plan_site_A", "train_site_A", "evaluate_site_A", "keygen_site_A", "pack_site_A", "verify_at_site_B",
        "plan_site_B_finetune", "finetune_site_B", "plan_site_B_scratch", "scratch_site_B",
        "evaluate_eval_site_A_model_on_B", "evaluate_eval_finetuned_on_B", "evaluate_eval_scratch_on_B", "drift",
        "infer_site_B", "evaluate_masks_site_B",
    ]  # fmt: skip
    # each run is planned from its site's data: plan.json + plan.md in its bundle, read by training (--args_file)
    for name, bundle, log in [
        ("site_A", "bundle_site_A", "train_site_A"),
        ("site_B_finetune", "bundle_site_B_finetuned", "finetune_site_B"),
        ("site_B_scratch", "bundle_site_B_scratch", "scratch_site_B"),
    ]:
        plan_json = tmp_path / bundle / "plan.json"
        assert (tmp_path / bundle / "plan.md").read_text().startswith("# Plan for ")
        command = (tmp_path / "logs" / f"{log}.log").read_text().splitlines()[0]
        assert f"--args_file {plan_json}" in command, command
        plan = json.loads(plan_json.read_text())
        assert plan["sampling"] == "classes" and len(plan["ratios"]) == len(plan["ce_weight"]) == 4  # the audit's
        values = summary["plans"][name]["values"]
        assert values["ratios"]["source"] == "plan" and values["intensity"]["source"] == "plan"
        assert values["max_epochs"]["source"].startswith("demo budget, planned with --max-epochs")
        assert values["pixdim"] == {"value": TINY["pixdim"], "source": f"demo override; plan: {plan['pixdim']}"}
        # the values every run shares are in the bundle copy's configs (evaluation and inference use them too)
        for config in ("train.json", "inference.json"):
            assert json.loads((tmp_path / bundle / "configs" / config).read_text())["intensity"] == plan["intensity"]
    plan_a = json.loads((tmp_path / "bundle_site_A" / "plan.json").read_text())
    plan_ft = json.loads((tmp_path / "bundle_site_B_finetuned" / "plan.json").read_text())
    assert plan_a["intensity"]["mode"] == "clip_zscore" and plan_ft["intensity"]["mode"] == "percentile_zscore"
    assert plan_a["max_epochs"] == 1 and plan_ft["max_epochs"] == 3  # the demo's budget, given to the planner
    assert plan_ft["pretrained"] == str((tmp_path / "site_A_bundle.zip").resolve())
    assert plan_ft["pretrained_options"]["class_mapping"] == {n: n for n in plan_ft["class_names"]}
    assert plan_ft["unfreeze_stages"] == [  # 3 training cases, 3 epochs: layer4 at half-time, the rest stays frozen
        {"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0},
        {"epoch": 2, "trainable": ["layer4"], "lr_scale": 0.1},
    ]
    assert "pretrained" not in json.loads((tmp_path / "bundle_site_B_scratch" / "plan.json").read_text())
    # the site A model as is: site B's planned normalisation, not site A's CT statistics
    command = (tmp_path / "logs" / "evaluate_eval_site_A_model_on_B.log").read_text().splitlines()[0]
    assert "percentile_zscore" in command

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


def test_plan_sources_say_where_each_value_comes_from():
    plan = {"intensity": {"mode": "clip_zscore"}, "max_epochs": 60, "val_interval": 3, "patch_size": [64, 64, 32]}
    explicit = {
        "max_epochs": (60, "demo budget"),
        "val_interval": (10, "demo budget"),
        "seed": (0, "demo seed"),
    }
    assert plan_sources(plan, explicit) == {
        "intensity": {"value": {"mode": "clip_zscore"}, "source": "plan"},
        "max_epochs": {"value": 60, "source": "demo budget"},
        "val_interval": {"value": 10, "source": "demo budget; plan: 3"},
        "patch_size": {"value": [64, 64, 32], "source": "plan"},
        "seed": {"value": 0, "source": "demo seed"},
    }

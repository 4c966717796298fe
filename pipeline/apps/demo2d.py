"""The 2D demo: site A trains on large microscopy images; site B fine-tunes to its small ones and compares with scratch.

Same shape as :mod:`pipeline.apps.demo` and built from its pieces (:func:`~pipeline.apps.demo.stage_bundle`,
:func:`~pipeline.apps.demo.bundle_command`, :func:`~pipeline.apps.demo.run_bundle`): every bundle step is the
``python -m monai.bundle run <id> ...`` command a user types, run in a subprocess, its command and output in
``<out>/logs/<step>.log``. Site A's images are 256 × 256 8-bit, site B's 128 × 100 16-bit with a drifted grain fraction
and worse contrast (:mod:`pipeline.data.synthetic2d`); no image is resized: training samples patches, inference slides a
window and pads where an image is smaller than it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.apps.demo import (
    DemoSettings,
    StepRunner,
    bundle_command,
    configure_bundle,
    stage_bundle,
    transfer_verdict,
)
from pipeline.bundle.config import BUNDLE_2D
from pipeline.utils.atomic import write_text

__all__ = ["Demo2DSettings", "mask_sizes", "run_demo_2d"]

logger = logging.getLogger(__name__)


@dataclass
class Demo2DSettings(DemoSettings):
    """Budget of the 2D demo; the defaults fit ≤ 3 minutes on 2 CPU cores.

    Site B is fine-tuned over ``epochs_site_b`` in three stages (:meth:`unfreeze_stages`); scratch gets the same
    epochs. ``bundle_values`` are top-level config values set in every bundle copy (what a site edits in its
    ``train.json``/``inference.json``), e.g. a lighter encoder for the CPU budget. Unlike the 3D demo this one does not
    plan its runs yet (``audit`` and ``memory_gb`` are unused): both sites train with the 2D bundle's defaults.
    """

    epochs_site_a: int = 30
    epochs_site_b: int = 15
    val_interval: int = 5
    overrides: dict[str, Any] = field(default_factory=lambda: {"lr": 0.005})
    bundle_values: dict[str, Any] | None = None

    def values(self) -> dict[str, Any]:
        """Config values of the demo's bundle copies: the shipped ones, lightened for 2 CPU cores by default."""
        if self.bundle_values is not None:
            return dict(self.bundle_values)
        return {"backbone": "resnet10", "decoder_channels": [64, 32, 16, 16, 8]}

    def unfreeze_stages(self) -> list[dict[str, Any]]:
        """Head + decoder first, ``layer4`` at LR×0.1 from a third of ``epochs_site_b``, the whole encoder at
        LR×0.01 from two thirds."""
        third = max(1, self.epochs_site_b // 3)
        return [
            {"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0},
            {"epoch": third, "trainable": ["layer4"], "lr_scale": 0.1},
            {"epoch": 2 * third, "trainable": ["encoder"], "lr_scale": 0.01},
        ]


def mask_sizes(images_dir: str | Path, masks_dir: str | Path) -> list[dict[str, Any]]:
    """``{"image", "image_size", "mask", "mask_size"}`` (sizes as ``[H, W]``) for each image and its ``*_seg`` mask."""
    from pipeline.data.datalist import case_id
    from pipeline.data.images2d import read_image_2d

    masks = {p.name.rsplit("_seg", 1)[0]: p for p in Path(masks_dir).rglob("*_seg.*")}
    rows = []
    for image in sorted(Path(images_dir).iterdir()):
        if image.name.startswith("."):
            continue
        size = [int(s) for s in read_image_2d(image)[1]["spatial_shape"]]
        mask = masks.get(case_id(image))
        mask_size = [int(s) for s in read_image_2d(mask, palette_as_index=True)[0].shape] if mask else None
        rows.append({"image": image.name, "image_size": size, "mask": mask and mask.name, "mask_size": mask_size})
    return rows


def run_demo_2d(out_dir: str | Path, settings: Demo2DSettings | None = None) -> dict[str, Any]:
    """Run the 2D demo into ``out_dir``; returns a summary dict (also written as ``demo_summary.json``).

    Steps: synthetic two-site microscopy → site A trains → site A evaluates on its test images → site B fine-tunes
    from site A's bundle with staged unfreezing, and trains from scratch with the same epochs → the site A model as
    is, the fine-tuned and the scratch model evaluated on site B's test images (per-class Dice/IoU tables) → batch
    inference over site B's test images with the fine-tuned model (PNG masks at each image's size).
    """
    from pipeline.data.synthetic2d import make_dataset_2d
    from pipeline.evaluation.report import compare_markdown

    settings = settings or Demo2DSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = StepRunner(out)
    data = step.timed("synth", lambda: make_dataset_2d(out / "data", site="both", channels=(1,), seed=settings.seed))
    site_a, site_b = data / "site_A", data / "site_B"
    common = {"seed": settings.seed, **settings.overrides}

    def stage(name: str) -> Path:
        bundle = stage_bundle(BUNDLE_2D, out / name)
        configure_bundle(bundle, settings.values())
        return bundle

    def evaluate(name: str, bundle: Path, dataset: Path, eval_dir: Path) -> None:
        files = ["train.json", "evaluate.json"]
        values = {"dataset_dir": str(dataset), "eval_dir": str(eval_dir), **common}
        step(name, bundle_command(bundle, "evaluating", files, values))

    # --- site A: train on the large images, evaluate
    bundle_a = stage("bundle_site_A")
    train_a = {"dataset_dir": str(site_a), "max_epochs": settings.epochs_site_a, "val_interval": settings.val_interval}
    step("train_site_A", bundle_command(bundle_a, "training", ["train.json"], {**train_a, **common}))
    eval_a = out / "eval_site_A_on_A"
    evaluate("evaluate_site_A", bundle_a, site_a, eval_a)

    # --- site B: fine-tune from site A's bundle with staged unfreezing vs scratch, same epochs
    train_b = {"dataset_dir": str(site_b), "max_epochs": settings.epochs_site_b, "val_interval": settings.val_interval}
    bundle_ft = stage("bundle_site_B_finetuned")
    # site A's folder is this run's own training output (no manifest): say so, as a user would (--trust_unverified)
    finetune = {**train_b, "pretrained": str(bundle_a), "trust_unverified": True,
                "unfreeze_stages": settings.unfreeze_stages(), **common}  # fmt: skip
    step("finetune_site_B", bundle_command(bundle_ft, "training", ["train.json", "finetune.json"], finetune))
    bundle_sc = stage("bundle_site_B_scratch")
    step("scratch_site_B", bundle_command(bundle_sc, "training", ["train.json"], {**train_b, **common}))
    evals = {
        "site A model, no fine-tuning": (bundle_a, out / "eval_site_A_model_on_B"),
        "fine-tuned (staged)": (bundle_ft, out / "eval_finetuned_on_B"),
        "scratch": (bundle_sc, out / "eval_scratch_on_B"),
    }
    for bundle, eval_dir in evals.values():
        evaluate("evaluate_" + eval_dir.name, bundle, site_b, eval_dir)

    # --- site B: batch inference over its images with the fine-tuned model; masks at each image's size
    pred_b = out / "predictions_site_B"
    infer = {"dataset_dir": str(site_b / "imagesTs"), "output_dir": str(pred_b)}
    step("infer_site_B", bundle_command(bundle_ft, "inferring", ["inference.json"], infer))

    summaries = {label: json.loads((d / "summary.json").read_text()) for label, (_, d) in evals.items()}
    summary = {
        "times_s": {k: round(v, 1) for k, v in step.times.items()},
        "eval_site_A": json.loads((eval_a / "summary.json").read_text()),
        "site_B": summaries,
        "comparison_dice_md": compare_markdown(summaries, "dice"),
        "comparison_iou_md": compare_markdown(summaries, "iou"),
        "verdict": transfer_verdict(summaries["fine-tuned (staged)"], summaries["scratch"]),
        "masks": mask_sizes(site_b / "imagesTs", pred_b),
    }
    write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    return summary

"""The end-to-end demo: site A trains and shares a bundle; site B verifies it, fine-tunes, compares with scratch.

Every bundle step runs as ``python -m monai.bundle run <id> ...`` in a subprocess, exactly the command a user
types (printed in the log), so the demo exercises the bundles as shipped. Each step's output goes to
``<out>/logs/<step>.log``; a failing step raises :class:`BundleRunError` naming that log.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.bundle.config import BUNDLE_3D
from pipeline.bundle.run import bundle_command, configure_bundle, run_bundle, stage_bundle
from pipeline.utils.atomic import write_text

__all__ = [
    "DemoSettings",
    "StepRunner",
    "run_demo",
    "transfer_verdict",
]

logger = logging.getLogger(__name__)


# Site A is CT (the bundle default, a [-150, 300] HU window); site B is MR-like with air at ~0, so its bundle
# copies scale by the 0.5/99.5 percentiles instead. Both put tissue near 0.4 and the organ near 0.6.
SITE_B_INTENSITY: dict[str, Any] = {"mode": "percentile", "lower": 0.5, "upper": 99.5}


@dataclass
class DemoSettings:
    """Budget of the demo; the defaults fit ≤ 10 minutes on 2 CPU cores (see README for real-data settings).

    With ``audit`` each site first runs ``python -m pipeline audit --write-override`` on its training data and
    trains with the recommended class ratios and CE weights (both site B arms with site B's), as
    ``docs/class-imbalance.md`` advises. Site B is fine-tuned with three stages over ``epochs_site_b``: head +
    decoder first, then ``layer4`` at LR×0.1 from a third of the way, then the whole encoder at LR×0.01 from two
    thirds; scratch gets the same epochs.
    """

    epochs_site_a: int = 60
    epochs_site_b: int = 30
    val_interval: int = 10
    seed: int = 0
    audit: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)

    def unfreeze_stages(self) -> list[dict[str, Any]]:
        third = max(1, self.epochs_site_b // 3)
        return [
            {"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0},
            {"epoch": third, "trainable": ["layer4"], "lr_scale": 0.1},
            {"epoch": 2 * third, "trainable": ["encoder"], "lr_scale": 0.01},
        ]


def _pipeline_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


class StepRunner:
    """Runs a demo's steps: each a command a user would type, its output in ``<out>/logs/<name>.log``, timed.

    ``times`` maps each step name to its seconds (``timed`` adds in-process steps such as data synthesis).
    """

    def __init__(self, out: Path) -> None:
        self.logs = out / "logs"
        self.times: dict[str, float] = {}

    def __call__(self, name: str, cmd: list[str]) -> None:
        """Run ``cmd`` (see :func:`run_bundle`); raises :class:`BundleRunError` naming the log if it fails."""
        self.times[name] = run_bundle(cmd, self.logs / f"{name}.log")
        logger.info("%s done in %.0f s", name, self.times[name])

    def timed(self, name: str, fn: Callable[[], Path]) -> Path:
        start = time.perf_counter()
        result = fn()
        self.times[name] = time.perf_counter() - start
        return result


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary dict (also written as ``demo_summary.json``).

    Steps (each a command a user would type; see ``<out>/logs``): synthetic data → class-balance audit of each
    site → site A trains → site A
    evaluates → site A packs its bundle → site B verifies the zip → site B fine-tunes from it with staged
    unfreezing, and trains from scratch with the same epochs → both evaluated on site B's test cases → layer
    drift → batch inference over site B's images → ``report.md``.
    """
    from pipeline.data.synthetic import make_dataset
    from pipeline.evaluation.report import build_report, compare_markdown

    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step = StepRunner(out)
    data = step.timed("synth", lambda: make_dataset(out / "data", dims=3, site="both", seed=settings.seed))
    site_a, site_b = data / "site_A", data / "site_B"
    common = {"seed": settings.seed, **settings.overrides}

    def balance(site: str, folder: Path) -> dict[str, Any]:
        """The audit's recommended sampling/loss settings for ``folder`` (none when the demo skips the audit)."""
        if not settings.audit:
            return {}
        override = out / f"audit_{site}" / "override.json"
        step(
            f"audit_{site}",
            _pipeline_command(
                "audit", str(folder), "--bundle", str(BUNDLE_3D), "--out", str(override.parent),
                "--write-override", str(override),
            ),
        )  # fmt: skip
        return dict(json.loads(override.read_text()))

    # --- site A: audit, train, evaluate, pack
    bundle_a = stage_bundle(BUNDLE_3D, out / "bundle_site_A")
    train_a: dict[str, Any] = {
        "dataset_dir": str(site_a),
        "max_epochs": settings.epochs_site_a,
        "val_interval": settings.val_interval,
    }
    train_a.update(balance("site_A", site_a))
    step("train_site_A", bundle_command(bundle_a, "training", ["train.json"], {**train_a, **common}))
    eval_a = out / "eval_site_A_on_A"
    step(
        "evaluate_site_A",
        bundle_command(
            bundle_a, "evaluating", ["train.json", "evaluate.json"],
            {"dataset_dir": str(site_a), "eval_dir": str(eval_a), **common},
        ),
    )  # fmt: skip
    zip_a = out / "site_A_bundle.zip"
    # site A signs what it ships; site B trusts site A's public key (exchanged out of band, fingerprint read out)
    keys = out / "keys"
    if keys.exists():  # the demo's own throwaway key pair from an earlier run (keygen never overwrites a key)
        shutil.rmtree(keys)
    key, public_key = keys / "site_A.key", keys / "site_A.key.pub"
    step("keygen_site_A", _pipeline_command("keygen", str(key), "--comment", "site A (demo)"))
    step("pack_site_A", _pipeline_command("pack", str(bundle_a), "-o", str(zip_a), "--force", "--sign", str(key)))

    # --- site B: verify, fine-tune vs scratch, evaluate both
    step("verify_at_site_B", _pipeline_command("verify", str(zip_a), "--trusted-keys", str(public_key)))
    train_b: dict[str, Any] = {
        "dataset_dir": str(site_b),
        "max_epochs": settings.epochs_site_b,
        "val_interval": settings.val_interval,
    }
    train_b.update(balance("site_B", site_b))
    bundle_ft = stage_bundle(BUNDLE_3D, out / "bundle_site_B_finetuned")
    configure_bundle(bundle_ft, {"intensity": SITE_B_INTENSITY})
    step(
        "finetune_site_B",
        bundle_command(
            bundle_ft, "training", ["train.json", "finetune.json"],
            {**train_b, "pretrained": str(zip_a), "trusted_keys": str(public_key),
             "unfreeze_stages": settings.unfreeze_stages(), **common},
        ),
    )  # fmt: skip
    bundle_sc = stage_bundle(BUNDLE_3D, out / "bundle_site_B_scratch")
    configure_bundle(bundle_sc, {"intensity": SITE_B_INTENSITY})
    step("scratch_site_B", bundle_command(bundle_sc, "training", ["train.json"], {**train_b, **common}))
    evals = {
        "site A model, no fine-tuning": (bundle_a, out / "eval_site_A_model_on_B"),
        "fine-tuned (staged)": (bundle_ft, out / "eval_finetuned_on_B"),
        "scratch": (bundle_sc, out / "eval_scratch_on_B"),
    }
    for bundle, eval_dir in evals.values():
        # the site A model as is still gets site B's intensity normalisation: the one fair way to use it there
        site_b_values = {"intensity": SITE_B_INTENSITY} if bundle == bundle_a else {}
        step(
            "evaluate_" + eval_dir.name,
            bundle_command(
                bundle, "evaluating", ["train.json", "evaluate.json"],
                {"dataset_dir": str(site_b), "eval_dir": str(eval_dir), **site_b_values, **common},
            ),
        )  # fmt: skip
    step("drift", _pipeline_command("drift", str(zip_a), str(bundle_ft), "--out", str(out / "drift")))

    # --- site B: batch inference over its archive with the fine-tuned model
    pred_b = out / "predictions_site_B"
    step(
        "infer_site_B",
        bundle_command(
            bundle_ft,
            "inferring",
            ["inference.json"],
            {"dataset_dir": str(site_b / "imagesTs"), "output_dir": str(pred_b)},
        ),
    )

    # the masks as written (each input's original grid) against site B's reference labels: overlays come from these
    eval_orig = out / "eval_finetuned_on_B_original_space"
    step(
        "evaluate_masks_site_B",
        _pipeline_command(
            "evaluate", "--pred-dir", str(pred_b), "--dataset-json", str(site_b / "dataset.json"), "--section", "test",
            "--bundle", str(bundle_ft), "--out", str(eval_orig),
        ),
    )  # fmt: skip

    summaries = {label: json.loads((d / "summary.json").read_text()) for label, (_, d) in evals.items()}
    comparison = compare_markdown(summaries)
    verdict = transfer_verdict(summaries["fine-tuned (staged)"], summaries["scratch"])
    report = build_report(
        bundle_ft / "runs",
        eval_orig,
        out / "report.md",
        title="Demo: site A model fine-tuned at site B (site B test cases, masks in original space)",
        compare={label: d for label, (_, d) in evals.items()},
    )
    with open(report, "a") as f:
        f.write("\n## Did transfer beat scratch? (same epochs, site B test cases)\n\n" + verdict + "\n")
        if (out / "drift" / "drift.png").is_file():
            f.write("\n## Layer drift during fine-tuning\n\n![drift](drift/drift.png)\n")
    summary = {
        "times_s": {k: round(v, 1) for k, v in step.times.items()},
        "eval_site_A": json.loads((eval_a / "summary.json").read_text()),
        "site_B": summaries,
        "comparison_md": comparison,
        "verdict": verdict,
        "report": str(report),
        "predictions": sorted(str(p.relative_to(out)) for p in pred_b.rglob("*.nii.gz")),
    }
    write_text(out / "demo_summary.json", json.dumps(summary, indent=2))
    return summary


def transfer_verdict(finetuned: Mapping[str, Any], scratch: Mapping[str, Any], metric: str = "dice") -> str:
    """One line per class saying whether fine-tuning beat scratch on mean ``metric`` (ties within 0.01)."""
    lines = []
    for name, c in finetuned["classes"].items():
        a = c["metrics"][metric]["mean"]
        b = scratch["classes"].get(name, {}).get("metrics", {}).get(metric, {}).get("mean")
        if a is None or b is None:
            lines.append(f"- {name}: not comparable (no scored case)")
            continue
        word = "tie" if abs(a - b) < 0.01 else ("transfer better" if a > b else "scratch better")
        lines.append(f"- {name}: {word} ({metric} {a:.3f} fine-tuned vs {b:.3f} scratch)")
    return "\n".join(lines)

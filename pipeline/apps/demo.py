"""The end-to-end demo: site A trains and shares a bundle; site B verifies it, fine-tunes, compares with scratch.

Every bundle step runs as ``python -m monai.bundle run <id> ...`` in a subprocess, exactly the command a user
types (printed in the log), so the demo exercises the bundles as shipped. Each step's output goes to
``<out>/logs/<step>.log``; a failing step raises :class:`BundleRunError` naming that log.

No site setting is hard-coded: each run is planned from its site's data first (``python -m pipeline plan``, with
``--from`` the signed site A zip for the fine-tuning), written as ``plan.json`` + ``plan.md`` (the reasons) in that
run's bundle folder. The values every later run of a bundle must share (classes, channels, intensity, pixdim) are
written into the bundle copy's configs; training reads the rest from ``--args_file plan.json``. Only the demo's
budget overrides the plan: ``max_epochs`` (given to the planner as ``--max-epochs``, so the fine-tuning stages are
sized to it), ``val_interval``, and :attr:`DemoSettings.overrides`; :func:`plan_sources` says which value came from
where, and the summary and log repeat it.
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
from pipeline.bundle.run import bundle_command, configure_bundle, run_bundle, shared_values, stage_bundle
from pipeline.utils.atomic import write_text

__all__ = [
    "DemoSettings",
    "StepRunner",
    "plan_sources",
    "run_demo",
    "transfer_verdict",
]

logger = logging.getLogger(__name__)

#: plan values from the class-balance audit; ``DemoSettings(audit=False)`` trains without them (bundle defaults)
SAMPLING_VALUES = ("sampling", "ratios", "ce_weight")


@dataclass
class DemoSettings:
    """Budget of the demo; the defaults fit ≤ 10 minutes on 2 CPU cores (see README for real-data settings).

    Every other setting comes from ``python -m pipeline plan`` on each site's data (see the module docstring):
    ``epochs_site_a``/``epochs_site_b`` are passed to it as ``--max-epochs`` (the plan alone sizes ~4000 steps,
    hundreds of epochs here), ``memory_gb`` as ``--memory-gb`` (the training memory the planner fits patch and batch
    to: 1.6 GB keeps the CPU demo at 64×64×32 patches, 2 per step; None: the planner's default for the device), and
    ``val_interval`` and ``overrides`` win over the plan on the command line. Site B's fine-tuning schedule is the
    plan's (``unfreeze_stages`` sized to its 3 training cases and ``epochs_site_b``); scratch gets the same epochs.
    ``audit=False`` trains without the plan's class-balance values (``sampling``/``ratios``/``ce_weight``: the
    bundle's defaults instead), for comparison (``docs/class-imbalance.md``).
    """

    epochs_site_a: int = 60
    epochs_site_b: int = 30
    val_interval: int = 10
    seed: int = 0
    audit: bool = True
    memory_gb: float | None = 1.6
    overrides: dict[str, Any] = field(default_factory=dict)


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


def plan_sources(plan: Mapping[str, Any], explicit: Mapping[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    """Where each value of a planned run comes from: ``{id: {"value": used, "source": why}}``.

    A value of ``plan`` is used as planned (source ``"plan"``) unless ``explicit`` (``{id: (value, why)}``, what the
    demo sets on the command line) names it: then the source is ``why``, followed by the plan's value where the two
    differ. Ids only in ``explicit`` (the seed, ...) are listed with their ``why``.
    """
    rows: dict[str, dict[str, Any]] = {}
    for key, value in plan.items():
        if key not in explicit:
            rows[key] = {"value": value, "source": "plan"}
            continue
        used, why = explicit[key]
        rows[key] = {"value": used, "source": why if used == value else f"{why}; plan: {json.dumps(value)}"}
    for key, (value, why) in explicit.items():
        rows.setdefault(key, {"value": value, "source": why})
    return rows


def _describe(name: str, rows: Mapping[str, Mapping[str, Any]]) -> str:
    planned = [k for k, r in rows.items() if r["source"] == "plan"]
    other = [f"{k} {json.dumps(r['value'])} ({r['source']})" for k, r in rows.items() if r["source"] != "plan"]
    return f"{name}: from the plan: {', '.join(planned)}; from the demo: {'; '.join(other) or 'nothing'}"


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns a summary dict (also written as ``demo_summary.json``).

    Steps (each a command a user would type; see ``<out>/logs``): synthetic data → site A plans its bundle from its
    data → site A trains → site A evaluates → site A packs and signs its bundle → site B verifies the zip → site B
    plans fine-tuning from it (``plan --from``) and fine-tunes with the planned staged unfreezing; it plans and
    trains a scratch model with the same epochs → all three models evaluated on site B's test cases → layer drift →
    batch inference over site B's images → ``report.md``. The summary's ``plans`` says, per run, where each setting
    came from (:func:`plan_sources`); each run's reasons are in ``<bundle>/plan.md``.
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
    plans: dict[str, dict[str, Any]] = {}

    def plan_run(name: str, bundle: Path, dataset: Path, epochs: int, *extra: str) -> tuple[dict[str, Any], Path]:
        """Step ``plan_<name>``: plan ``bundle`` for ``dataset`` into ``<bundle>/plan.json`` (reasons: ``plan.md``),
        write the values all runs share into the copy's configs; returns the plan and the training ``--args_file``."""
        path = bundle / "plan.json"
        args = ["plan", str(dataset), "--bundle", str(bundle), "--out", str(path), "--max-epochs", str(epochs), *extra]
        if settings.memory_gb is not None:
            args += ["--memory-gb", str(settings.memory_gb)]
        step(f"plan_{name}", _pipeline_command(*args))
        plan = dict(json.loads(path.read_text()))
        configure_bundle(bundle, shared_values(bundle, plan))
        train_config = json.loads((bundle / "configs" / "train.json").read_text())
        explicit: dict[str, tuple[Any, str]] = {
            "max_epochs": (epochs, f"demo budget, planned with --max-epochs {epochs} (the plan alone: ~4000 steps)"),
            "val_interval": (settings.val_interval, "demo budget"),
            "seed": (settings.seed, "demo seed"),
        }
        args_file = path
        if not settings.audit:  # the bundle's own sampling: the plan without its class-balance values
            args_file = bundle / "plan_no_audit.json"
            write_text(args_file, json.dumps({k: v for k, v in plan.items() if k not in SAMPLING_VALUES}, indent=2))
            explicit.update({k: (train_config.get(k), "bundle default (--no-audit)") for k in SAMPLING_VALUES})
        explicit.update({k: (v, "demo override") for k, v in settings.overrides.items()})
        plans[name] = {
            "plan": str(path),
            "reasons": str(path.with_suffix(".md")),
            "values": plan_sources(plan, explicit),
        }
        logger.info("%s", _describe(name, plans[name]["values"]))
        return plan, args_file

    def train_values(dataset: Path, args_file: Path) -> dict[str, Any]:
        return {
            "dataset_dir": str(dataset),
            "args_file": str(args_file),
            "val_interval": settings.val_interval,
            **common,
        }

    # --- site A: plan, train, evaluate, pack
    bundle_a = stage_bundle(BUNDLE_3D, out / "bundle_site_A")
    _, args_a = plan_run("site_A", bundle_a, site_a, settings.epochs_site_a)
    step("train_site_A", bundle_command(bundle_a, "training", ["train.json"], train_values(site_a, args_a)))
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

    # --- site B: verify, plan fine-tuning from the zip and scratch, train both, evaluate all three
    step("verify_at_site_B", _pipeline_command("verify", str(zip_a), "--trusted-keys", str(public_key)))
    bundle_ft = stage_bundle(BUNDLE_3D, out / "bundle_site_B_finetuned")
    source = ("--from", str(zip_a), "--trusted-keys", str(public_key))
    _, args_ft = plan_run("site_B_finetune", bundle_ft, site_b, settings.epochs_site_b, *source)
    files_ft = ["train.json", "finetune.json"]
    step("finetune_site_B", bundle_command(bundle_ft, "training", files_ft, train_values(site_b, args_ft)))
    bundle_sc = stage_bundle(BUNDLE_3D, out / "bundle_site_B_scratch")
    plan_b, args_sc = plan_run("site_B_scratch", bundle_sc, site_b, settings.epochs_site_b)
    step("scratch_site_B", bundle_command(bundle_sc, "training", ["train.json"], train_values(site_b, args_sc)))
    evals = {
        "site A model, no fine-tuning": (bundle_a, out / "eval_site_A_model_on_B"),
        "fine-tuned (staged)": (bundle_ft, out / "eval_finetuned_on_B"),
        "scratch": (bundle_sc, out / "eval_scratch_on_B"),
    }
    # the site A model as is gets site B's planned intensity normalisation (site A's CT statistics mean nothing on
    # site B's images): the one fair way to use it there; it keeps its own pixdim
    plans["site_A_model_on_B"] = {"values": {"intensity": {"value": plan_b["intensity"], "source": "site B's plan"}}}
    for bundle, eval_dir in evals.values():
        site_b_values = {"intensity": plan_b["intensity"]} if bundle == bundle_a else {}
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
        "plans": plans,
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

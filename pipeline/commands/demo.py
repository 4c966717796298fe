"""``python -m pipeline demo OUT``: the end-to-end demo on synthetic two-site data."""

from __future__ import annotations

import argparse
import time

from pipeline.demo import DemoSettings, DemoStepError, run_demo
from pipeline.metrics import summary_markdown

HELP = "run the end-to-end demo on built-in synthetic two-site data (what `make demo` runs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (data, bundles, evaluations, predictions, logs, report.md)")
    parser.add_argument("--epochs-a", type=int, default=DemoSettings.epochs_site_a, help="site A training epochs")
    parser.add_argument("--epochs-b", type=int, default=DemoSettings.epochs_site_b, help="site B epochs (each arm)")
    parser.add_argument("--val-interval", type=int, default=DemoSettings.val_interval)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        help="train with the bundle's default sampling instead of each site's audit recommendation",
    )


def run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        epochs_site_a=args.epochs_a,
        epochs_site_b=args.epochs_b,
        val_interval=args.val_interval,
        seed=args.seed,
        audit=args.audit,
    )
    start = time.perf_counter()
    print(f"demo: writing everything to {args.out} (each step's command and output in {args.out}/logs/)")
    try:
        summary = run_demo(args.out, settings)
    except DemoStepError as e:
        print(f"demo FAILED: {e}")
        return 1
    print()
    print(summary_markdown(summary["eval_site_A"], title="Site A model on site A test cases"))
    print("## Site B test cases: site A model as is, fine-tuned from it, and trained from scratch (mean Dice)\n")
    print(summary["comparison_md"])
    print(summary["verdict"])
    print()
    print("step times (s):", ", ".join(f"{k} {v}" for k, v in summary["times_s"].items()))
    print(f"site B masks written: {len(summary['predictions'])}; report: {summary['report']}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0

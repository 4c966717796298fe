"""``python -m pipeline demo OUT [--dims 3|2]``: the end-to-end demo on synthetic two-site data.

``--dims 3`` (default): CT-like site A trains, packs and shares a bundle; MR-like site B verifies, fine-tunes and
compares with scratch. ``--dims 2``: microscopy, site A's large images to site B's small ones. ``demo-2d`` is the same
command with ``--dims 2``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pipeline.bundle.run import BundleRunError
from pipeline.evaluation.metrics import summary_markdown

HELP = "run the end-to-end demo on built-in synthetic two-site data, 3D (default, `make demo`) or 2D (--dims 2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (data, bundles, evaluations, predictions, logs, report)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3D volumes (default) or 2D microscopy")
    parser.add_argument("--epochs-a", type=int, help="site A training epochs (default: 60 in 3D, the 2D demo's own)")
    parser.add_argument("--epochs-b", type=int, help="site B epochs, each arm (default: 30 in 3D, the 2D demo's own)")
    parser.add_argument("--val-interval", type=int, help="validate every N epochs (default: the demo's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-audit",
        dest="audit",
        action="store_false",
        help="3D: train with the bundle's default sampling instead of the plan's (each site's audit recommendation)",
    )
    parser.add_argument(
        "--memory-gb",
        type=float,
        help="3D: training memory each site's plan fits patch and batch to (plan --memory-gb; default 1.6, which "
        "keeps the CPU demo at 64x64x32 patches); 0: the planner's default for the device",
    )
    parser.add_argument(
        "--shipped-network",
        action="store_true",
        help="2D: train the bundle's shipped encoder (resnet18) instead of the lighter resnet10 the CPU budget uses",
    )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    names = {"epochs_a": "epochs_site_a", "epochs_b": "epochs_site_b", "val_interval": "val_interval"}
    return {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}


def _run_3d(args: argparse.Namespace) -> int:
    from pipeline.apps.demo import DemoSettings, run_demo

    given = _given(args)
    if args.memory_gb is not None:
        given["memory_gb"] = args.memory_gb or None
    settings = DemoSettings(seed=args.seed, audit=args.audit, **given)
    summary = run_demo(args.out, settings)
    print()
    print("## Settings: each run planned from its site's data (python -m pipeline plan; reasons in each plan.md)\n")
    for name, plan in summary["plans"].items():
        rows = plan["values"]
        planned = [k for k, r in rows.items() if r["source"] == "plan"]
        where = f" ({plan['reasons']})" if "reasons" in plan else ""
        print(f"- {name}{where}: from the plan: {', '.join(planned) or 'nothing'}")
        for k, r in rows.items():
            if r["source"] != "plan":
                print(f"    {k} = {json.dumps(r['value'])}: {r['source']}")
    print()
    print(summary_markdown(summary["eval_site_A"], title="Site A model on site A test cases"))
    print("## Site B test cases: site A model as is, fine-tuned from it, and trained from scratch (mean Dice)\n")
    print(summary["comparison_md"])
    print(summary["verdict"])
    print()
    print("step times (s):", ", ".join(f"{k} {v}" for k, v in summary["times_s"].items()))
    print(f"site B masks written: {len(summary['predictions'])}; report: {summary['report']}")
    return 0


def _run_2d(args: argparse.Namespace) -> int:
    from pipeline.apps.demo2d import Demo2DSettings, run_demo_2d

    values: dict[str, Any] | None = {} if args.shipped_network else None
    settings = Demo2DSettings(seed=args.seed, bundle_values=values, **_given(args))
    summary = run_demo_2d(args.out, settings)
    print()
    print(summary_markdown(summary["eval_site_A"], title="Site A model on site A test images (256 x 256)"))
    print("## Site B test images (128 x 100): site A model as is, fine-tuned from it, and from scratch\n")
    print("Mean Dice per class:\n")
    print(summary["comparison_dice_md"])
    print("Mean IoU per class:\n")
    print(summary["comparison_iou_md"])
    print(summary["verdict"])
    print()
    sizes = ", ".join(f"{m['image']} {m['image_size']} -> {m['mask_size']}" for m in summary["masks"])
    print(f"site B masks (PNG, [H, W] of image -> mask): {sizes}")
    print("step times (s):", ", ".join(f"{k} {v}" for k, v in summary["times_s"].items()))
    return 0


def run(args: argparse.Namespace) -> int:
    name = "demo" if args.dims == 3 else "demo --dims 2"
    start = time.perf_counter()
    print(f"{name}: writing everything to {args.out} (each step's command and output in {args.out}/logs/)")
    try:
        code = _run_3d(args) if args.dims == 3 else _run_2d(args)
    except BundleRunError as e:
        print(f"{name} FAILED: {e}")
        return 1
    print(f"{name} finished in {time.perf_counter() - start:.0f} s")
    return code

"""``python -m pipeline demo-2d OUT``: the 2D demo on synthetic two-site microscopy (large images → small ones)."""

from __future__ import annotations

import argparse
import time

from pipeline.demo import DemoStepError
from pipeline.demo2d import Demo2DSettings, run_demo_2d
from pipeline.metrics import summary_markdown

HELP = "run the 2D demo: train on site A's large microscopy images, fine-tune to site B's small ones vs scratch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (data, bundles, evaluations, predictions, logs)")
    parser.add_argument("--epochs-a", type=int, default=Demo2DSettings.epochs_site_a, help="site A training epochs")
    parser.add_argument("--epochs-b", type=int, default=Demo2DSettings.epochs_site_b, help="site B epochs (each arm)")
    parser.add_argument("--val-interval", type=int, default=Demo2DSettings.val_interval)
    parser.add_argument(
        "--shipped-network",
        action="store_true",
        help="train the bundle's shipped encoder (resnet18) instead of the lighter resnet10 the CPU budget uses",
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    settings = Demo2DSettings(
        epochs_site_a=args.epochs_a,
        epochs_site_b=args.epochs_b,
        val_interval=args.val_interval,
        seed=args.seed,
        bundle_values={} if args.shipped_network else None,
    )
    start = time.perf_counter()
    print(f"demo-2d: writing everything to {args.out} (each step's command and output in {args.out}/logs/)")
    try:
        summary = run_demo_2d(args.out, settings)
    except DemoStepError as e:
        print(f"demo-2d FAILED: {e}")
        return 1
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
    print(f"demo-2d finished in {time.perf_counter() - start:.0f} s")
    return 0

"""``python -m pipeline drift BEFORE AFTER [--out DIR]``: how much each layer moved between two checkpoints."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = "per-layer relative weight change between two bundles/zips/checkpoints -> drift.csv, drift.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", type=Path, help="bundle dir or zip, or .pt/.pth/.safetensors file (e.g. pretrained)")
    parser.add_argument("after", type=Path, help="bundle dir or zip, or checkpoint file (e.g. fine-tuned)")
    parser.add_argument("--out", type=Path, default=Path("drift_out"), help="output folder (default: drift_out)")
    parser.add_argument("--top", type=int, default=10, help="how many of the most changed layers to print")


def run(args: argparse.Namespace) -> int:
    from pipeline.networks.drift import layer_drift, plot_drift, write_drift_csv
    from pipeline.networks.sources import align_state_dict, read_state_dict

    try:
        after_raw = read_state_dict(args.after)
        after = {t: v for _, _, t, v in align_state_dict(after_raw, after_raw)[1]}
        before = {t: v for _, _, t, v in align_state_dict(read_state_dict(args.before), after)[1]}
        rows = layer_drift(before, after)
    except (OSError, ValueError) as e:
        print(f"drift: {e}")
        return 1
    csv_path = write_drift_csv(rows, args.out / "drift.csv")
    png_path = plot_drift(rows, args.out / "drift.png", title=f"Layer drift: {args.before.name} -> {args.after.name}")
    finite = [r for r in rows if math.isfinite(r.rel_change)]
    print(f"{len(rows)} layers compared; median relative change {_median([r.rel_change for r in finite]):.4g}")
    print(f"top {min(args.top, len(rows))} changed layers (||W_after - W_before|| / ||W_before||):")
    for row in sorted(rows, key=lambda r: r.rel_change, reverse=True)[: args.top]:
        print(f"  {row.rel_change:10.4g}  {row.layer}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


def _median(values: list[float]) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2

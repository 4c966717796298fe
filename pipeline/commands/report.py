"""``python -m pipeline report``: curves, per-class box plot and overlays of a run in one markdown file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "markdown report of a run: training curves, evaluation summary, box plot, best/worst overlays"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="training run folder with TensorBoard event files")
    parser.add_argument("--eval-dir", type=Path, help="evaluation folder (default: RUN_DIR/eval if present)")
    parser.add_argument("--out", type=Path, help="report path (default: RUN_DIR/report.md)")
    parser.add_argument("--title", default="Segmentation report", help="report heading")
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=EVAL_DIR",
        help="add an evaluation to a per-class comparison table (repeatable), e.g. transfer=runs/a/eval",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluation.report import build_report

    compare = {}
    for item in args.compare:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            print(f"error: --compare expects LABEL=EVAL_DIR, got {item!r}.", file=sys.stderr)
            return 2
        compare[label] = folder
    if not args.run_dir.is_dir():
        print(f"error: run folder {args.run_dir} does not exist.", file=sys.stderr)
        return 1
    try:
        md = build_report(args.run_dir, args.eval_dir, args.out, title=args.title, compare=compare or None)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    figures = sorted(p.name for p in (md.parent / f"{md.stem}_figures").glob("*.png"))
    print(f"wrote {md} with {len(figures)} figure(s): {', '.join(figures) or 'none'}")
    return 0

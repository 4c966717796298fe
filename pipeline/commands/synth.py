"""``python -m pipeline synth OUT``: write the synthetic two-site dataset."""

from __future__ import annotations

import argparse

from pipeline.synthetic import CLASS_NAMES, make_dataset

HELP = "write deterministic synthetic two-site phantoms (NIfTI + dataset.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (site_A/ and site_B/ are created inside)")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=3, help="3 for volumes, 2 for slices")
    parser.add_argument("--site", choices=("A", "B", "both"), default="both")
    parser.add_argument("--n-train", type=int, default=None, help="training cases per site (default A: 8, B: 3)")
    parser.add_argument("--n-val", type=int, default=None, help="validation cases per site (default A: 2, B: 1)")
    parser.add_argument("--n-test", type=int, default=None, help="test cases per site (default 2)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = make_dataset(
        args.out,
        dims=args.dims,
        site=args.site,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
    )
    print(f"wrote synthetic {args.dims}D data to {out} (classes: {CLASS_NAMES})")
    return 0

"""``python -m pipeline synth OUT``: write the synthetic two-site dataset (3D phantoms, or 2D microscopy)."""

from __future__ import annotations

import argparse

from pipeline.data.synthetic import CLASS_NAMES, make_dataset

HELP = "write deterministic synthetic two-site data: 3D phantoms (NIfTI) or 2D microscopy (PNG, 6-channel .npy)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (site_A/ and site_B/ are created inside; 2D adds site_*_6ch/)")
    parser.add_argument(
        "--dims",
        type=int,
        choices=(2, 3),
        default=3,
        help="3: CT/MR-like volumes; 2: two-phase microscopy with pores, site A 256x256, site B 128x100",
    )
    parser.add_argument("--site", choices=("A", "B", "both"), default="both")
    parser.add_argument("--n-train", type=int, default=None, help="training cases per site (default A: 8, B: 3)")
    parser.add_argument("--n-val", type=int, default=None, help="validation cases per site (default A: 2, B: 1)")
    parser.add_argument("--n-test", type=int, default=None, help="test cases per site (default 3D: 2; 2D A: 2, B: 3)")
    parser.add_argument(
        "--channels",
        type=int,
        nargs="+",
        choices=(1, 6),
        default=(1, 6),
        help="2D only: 1 = grey PNG (site_X/), 6 = multispectral .npy stacks (site_X_6ch/); default both",
    )
    parser.add_argument(
        "--label-format",
        choices=("index", "rgb"),
        default="index",
        help="2D only: index-mask PNGs, or RGB-coded PNGs (colours in dataset.json 'label_colors')",
    )
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    counts = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test}
    if args.dims == 2:
        from pipeline.data.synthetic2d import CLASS_NAMES_2D, make_dataset_2d

        out = make_dataset_2d(
            args.out, site=args.site, channels=args.channels, label_format=args.label_format, seed=args.seed, **counts
        )
        print(f"wrote synthetic 2D microscopy to {out} (channels {list(args.channels)}; classes: {CLASS_NAMES_2D})")
        return 0
    out = make_dataset(args.out, dims=args.dims, site=args.site, seed=args.seed, **counts)
    print(f"wrote synthetic {args.dims}D data to {out} (classes: {CLASS_NAMES})")
    return 0

"""``python -m pipeline overfit --bundle B --dataset_dir D``: can the bundle's setup memorise a few cases?"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["HELP", "add_arguments", "run"]

HELP = "sanity check: train the bundle's network/transforms/loss on 2-5 cases until train Dice >= target -> PASS/FAIL"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/train.json)")
    parser.add_argument("--dataset_dir", type=Path, required=True, help="dataset; the first training cases are used")
    parser.add_argument("--cases", type=int, default=3, help="training cases to memorise, 1-5 (default 3)")
    parser.add_argument("--max-steps", type=int, default=300, help="optimiser steps before FAIL (default 300)")
    parser.add_argument("--target", type=float, default=0.95, help="train Dice to reach (default 0.95)")
    parser.add_argument("--eval-every", type=int, default=20, help="steps between train-Dice evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy 2-core machine)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help="bundle override, repeatable, e.g. --set 'pixdim=[3,3,4]' --set 'patch_size=[32,32,32]' --set lr=0.003",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.apps.overfit import overfit
    from pipeline.bundle.overrides import parse_set_options

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        overrides = parse_set_options(args.set)
    except ValueError as e:
        print(f"overfit: {e}")
        return 2
    try:
        result = overfit(
            args.bundle,
            args.dataset_dir,
            cases=args.cases,
            max_steps=args.max_steps,
            target=args.target,
            eval_every=args.eval_every,
            overrides=overrides,
            seed=args.seed,
        )
    except (OSError, ValueError) as e:
        print(f"overfit: {e}")
        return 2
    for step, loss, dice in result.history:
        print(f"  step {step:5d}  loss {loss:.4f}  train Dice {dice:.3f}")
    print(result.summary())
    return 0 if result.passed else 1

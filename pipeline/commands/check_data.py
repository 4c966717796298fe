"""``python -m pipeline check-data DATASET_DIR [--bundle B]``: every problem of a dataset, before training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "validate a dataset before training: missing/corrupt/truncated files, image/label shape and affine, label values, "
    "NaN/Inf, dims and channels, duplicates; lists every problem (exit 1 if any error)"
)
_BUNDLE_IDS = ("spatial_dims", "in_channels", "class_names", "patch_size", "pixdim", "backbone")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", type=Path, help="MSD-style folder (dataset.json, or imagesTr/ + labelsTr/)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle folder: spatial_dims, in_channels, class_names, patch_size, pixdim, backbone from its "
        "configs/train.json (default: 3D, 1 channel, classes from dataset.json)",
    )
    parser.add_argument(
        "--level",
        choices=("headers", "full"),
        default="full",
        help="headers: no voxel data read (fast); full: also label values and NaN/Inf intensities (default)",
    )
    parser.add_argument(
        "--section",
        action="append",
        dest="sections",
        choices=("training", "validation", "test"),
        help="datalist section to check, repeatable (default: training and validation)",
    )
    parser.add_argument("--affine-tol", type=float, default=1e-3, help="allowed image/label affine difference")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")


def _bundle_settings(bundle: Path) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    configs = bundle / "configs"
    if not (configs / "train.json").is_file():
        raise FileNotFoundError(f"{configs / 'train.json'} does not exist; pass a bundle folder holding configs/.")
    parser = ConfigParser()
    parser.read_config(str(configs / "train.json"))
    parser["bundle_root"] = str(bundle)
    return {key: parser.get_parsed_content(key) for key in _BUNDLE_IDS if key in parser}


def run(args: argparse.Namespace) -> int:
    from pipeline.checks import check_dataset, check_patch_size

    try:
        settings = _bundle_settings(args.bundle) if args.bundle else {}
    except (OSError, ValueError, RuntimeError) as e:
        print(f"check-data: cannot read bundle settings: {e}")
        return 2
    backbone = settings.pop("backbone", "resnet10")
    report = check_dataset(
        args.dataset_dir,
        level=args.level,
        sections=tuple(args.sections or ("training", "validation")),
        affine_tol=args.affine_tol,
        **settings,
    )
    if "patch_size" in settings:
        report.problems += check_patch_size(settings["patch_size"], settings.get("spatial_dims", 3), backbone)
    print(report.summary())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        print(f"wrote {args.json}")
    if report.errors:
        print("check-data: fix the errors above (docs/troubleshooting.md explains each), then run it again.")
        return 1
    return 0

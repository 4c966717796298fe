"""``python -m pipeline check-data DATASET_DIR [--bundle B]``: every problem of a 2D or 3D dataset, before training."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "run"]

HELP = (
    "validate a dataset before training: missing/corrupt/truncated files, image/label shape and affine, label values "
    "(2D: mask colours), NaN/Inf, dims and channels, duplicates; lists every problem (exit 1 if any error)"
)
_BUNDLE_IDS = (
    "spatial_dims", "in_channels", "class_names", "patch_size", "pixdim", "backbone", "label_colors", "channel_dim",
    "color_tolerance",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", type=Path, help="MSD-style folder (dataset.json, or imagesTr/ + labelsTr/)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle folder: spatial_dims, in_channels, class_names, patch_size, pixdim, backbone and (2D) "
        "label_colors, channel_dim, color_tolerance from its configs/train.json (default: 3D, 1 channel, classes "
        "from dataset.json)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help='override a setting as for training, repeatable, e.g. --set \'label_colors={"0": [0, 0, 0], '
        '"1": [255, 0, 0]}\'',
    )
    parser.add_argument(
        "--level",
        choices=("headers", "full"),
        default="full",
        help="headers: no voxel data read (fast; 2D files are read whole anyway); full: also label values and NaN/Inf "
        "intensities (default)",
    )
    parser.add_argument(
        "--section",
        action="append",
        dest="sections",
        choices=("training", "validation", "test"),
        help="datalist section to check, repeatable (default: training and validation)",
    )
    parser.add_argument("--affine-tol", type=float, default=1e-3, help="allowed image/label affine difference (3D)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report as JSON")


def _settings(bundle: Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The check's settings: the bundle's ids (after ``overrides``), or the overrides alone without a bundle."""
    if bundle is None:
        unknown = sorted(set(overrides) - set(_BUNDLE_IDS))
        if unknown:
            raise ValueError(f"--set {unknown[0]!r} is not a check setting; without --bundle: {list(_BUNDLE_IDS)}.")
        return dict(overrides)
    from pipeline.bundle.config import get_parsed, open_bundle

    parser = open_bundle(bundle, "train.json", overrides)
    return {key: get_parsed(parser, key) for key in _BUNDLE_IDS if key in parser}


def run(args: argparse.Namespace) -> int:
    from pipeline.bundle.overrides import parse_set_options
    from pipeline.checks.dataset import check_dataset
    from pipeline.checks.settings import check_patch_size, class_names_problem, label_colors_fallback

    try:
        settings = _settings(args.bundle, parse_set_options(args.set))
    except (OSError, ValueError, RuntimeError) as e:
        print(f"check-data: cannot read the settings: {e}")
        return 2
    backbone = settings.pop("backbone", "resnet10")
    try:
        note = label_colors_fallback(args.dataset_dir, settings)
        report = check_dataset(
            args.dataset_dir,
            level=args.level,
            sections=tuple(args.sections or ("training", "validation")),
            affine_tol=args.affine_tol,
            **settings,
        )
    except ValueError as e:  # a malformed setting (e.g. label_colors); dataset problems are in the report
        print(f"check-data: {e}")
        return 2
    if note is not None:
        report.problems.append(note)
    if args.bundle is not None and "class_names" in settings:  # name the bundle's config in the class mismatch
        where = f"{args.bundle / 'configs' / 'train.json'} class_names"
        mismatch = class_names_problem(args.dataset_dir, settings["class_names"], where, args.bundle)
        report.problems = [p for p in report.problems if p.kind != "class_names"] + ([mismatch] if mismatch else [])
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

"""``python -m pipeline audit DATASET_DIR``: class balance of a labelled dataset and recommended sampling."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run"]

HELP = "class-balance audit of a dataset: class frequencies, missing classes, bad labels, recommended sampling ratios"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", type=Path, help="MSD-style folder (dataset.json, or imagesTr/ + labelsTr/)")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="bundle folder: class names from configs/train.json class_names (must match dataset.json labels, "
        "else an error: python -m pipeline plan fixes it); how to read labels (spatial_dims, 2D label_colors, "
        "channel_dim, color_tolerance) from configs/train.json",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help='override a bundle setting, repeatable, e.g. --set \'label_colors={"0": [0, 0, 0], "1": [255, 0, 0]}\'',
    )
    parser.add_argument("--out", type=Path, default=Path("audit_out"), help="output folder (default: audit_out)")
    parser.add_argument(
        "--section",
        action="append",
        dest="sections",
        help="datalist section to audit, repeatable (default: training and validation)",
    )
    parser.add_argument(
        "--write-override",
        type=Path,
        metavar="FILE",
        help="write the recommended sampling/loss settings as a bundle override JSON (use with --args_file FILE)",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.apps.audit import audit_dataset, audit_markdown, override_config, write_audit
    from pipeline.bundle.overrides import parse_set_options
    from pipeline.data.datalist import DatalistError

    sections = tuple(args.sections or ("training", "validation"))
    try:
        overrides = parse_set_options(args.set)
        if overrides and args.bundle is None:
            raise ValueError("--set overrides bundle settings; give --bundle too.")
        report = audit_dataset(args.dataset_dir, bundle=args.bundle, sections=sections, overrides=overrides)
    except (DatalistError, ValueError) as e:
        print(f"audit: {e}")
        return 1
    paths = write_audit(report, args.out)
    print(audit_markdown(report, per_case=len(report.cases) <= 20))
    print(f"wrote {paths['json']}, {paths['md']} (per-case table) and {paths['png']}")
    if args.write_override and report.recommendation is not None:
        args.write_override.parent.mkdir(parents=True, exist_ok=True)
        args.write_override.write_text(json.dumps(override_config(report.recommendation), indent=2) + "\n")
        print(
            f"wrote {args.write_override}: python -m monai.bundle run training --args_file {args.write_override} "
            "--config_file ... (or append it to the --config_file list)"
        )
    if report.errors:
        print(f"audit: {len(report.errors)} problem(s) found; fix them before training (see above).")
        return 1
    return 0

"""``python -m pipeline infer``: segment every NIfTI file and DICOM series under a folder with a bundle's model.

The engine is the bundle's own ``batch_inference`` (:func:`pipeline.inference.bundle.from_bundle`), the very component
``python -m monai.bundle run inferring`` runs, so the command and the bundle write the same masks. Each flag sets one
bundle id (:data:`FLAG_IDS`); a flag left out keeps the bundle's value.
The output folder is checked (created, a write probe) before the model loads, and locked for the run: a second
``infer`` on the same folder stops with one line naming the PID that holds it.
The bundle folder is checked before anything is built (:func:`pipeline.share.trust.check_bundle_folder`): an
imported one is verified again (``--trusted-keys``, ``--allow-unsigned``), a local one's configs must be the toolkit's
templates with allowed parameters; ``--trust-unverified`` skips this (logged as a WARNING).
Exit code: 0 all inputs processed or skipped, 3 some failed (see ``failures.csv``), 1 usage/config error (an unusable
or locked output folder too), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["FLAG_IDS", "HELP", "add_arguments", "bundle_overrides", "run"]

HELP = "segment every NIfTI file / DICOM series under a folder with a bundle; masks in each input's own grid"

#: command-line option (argparse dest) -> the bundle id it sets
FLAG_IDS = {
    "overlap": "sw_overlap",
    "mode": "sw_mode",
    "sw_batch_size": "sw_batch_size",
    "device": "device",
    "probabilities": "probabilities",
    "dicom_seg": "dicom_seg",
    "overwrite": "overwrite",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", type=Path, help="folder of NIfTI files and/or DICOM series (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="where masks, summary.json and failures.csv go")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument("--checkpoint", type=Path, help="weights to load (default: the bundle's ckpt_path)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist")
    parser.add_argument("--probabilities", action="store_true", help="also write <case>_prob.nii.gz (float32, C)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the bundle's sw_overlap)")
    parser.add_argument("--mode", choices=("gaussian", "constant"), help="window blending (default: bundle's sw_mode)")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: bundle's)")
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: the bundle's device)")
    parser.add_argument(
        "--dicom-seg",
        nargs="?",
        const="binary",
        choices=("binary", "fractional"),
        help="also write DICOM SEG for DICOM series (highdicom): the label map (binary, the default) or each class's "
        "probability (fractional)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--trusted-keys",
        default=None,
        metavar="DIR|FILE",
        help="senders' public keys for a received (imported) bundle folder (default $PIPELINE_TRUSTED_KEYS)",
    )
    parser.add_argument(
        "--allow-unsigned", action="store_true", help="accept a received bundle folder not signed by a trusted key"
    )
    parser.add_argument(
        "--trust-unverified",
        action="store_true",
        help="run the bundle folder's configs without checking them (only for configs you wrote yourself)",
    )


def bundle_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The bundle ids the given flags set (flags left out, and switches not set, change nothing)."""
    given = {k: v for k, v in vars(args).items() if k in FLAG_IDS and v is not None and v is not False}
    overrides = {FLAG_IDS[k]: v for k, v in given.items()}
    if args.no_progress:
        overrides["progress"] = False
    return overrides


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from pipeline.bundle.config import BundleError
    from pipeline.data.datalist import DatalistError
    from pipeline.inference.bundle import from_bundle
    from pipeline.inference.output import OutputFolderError, check_output_dir
    from pipeline.share.report import ShareError

    try:
        check_output_dir(args.output_dir)  # before the model loads: a bad folder costs nothing
        engine = from_bundle(
            args.bundle,
            args.checkpoint,
            bundle_overrides(args),
            trust_unverified=args.trust_unverified,
            trusted_keys=args.trusted_keys,
            allow_unsigned=args.allow_unsigned,
        )
        with logging_redirect_tqdm():
            report = engine.run(args.input_dir, args.output_dir)
    except (BundleError, DatalistError, OutputFolderError, FileNotFoundError, ValueError, ImportError, ShareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_proc, n_skip, n_fail = len(report.processed), len(report.skipped), len(report.failed)
    print(f"{n_proc} processed, {n_skip} skipped (already done), {n_fail} failed in {report.seconds:.1f} s")
    for f in report.failed[:10]:
        print(f"  FAILED {f['input']} [{f['stage']}]: {f['reason']}")
    if n_fail > 10:
        print(f"  ... {n_fail - 10} more")
    print(f"outputs in {report.output_dir} (summary.json, failures.csv)")
    return report.exit_code

"""``python -m pipeline pack BUNDLE_DIR``: zip a trained bundle for another site (manifest, provenance, TorchScript)."""

from __future__ import annotations

import argparse

from pipeline.share.pack import EXPORTS, pack_bundle
from pipeline.share.report import ShareError
from pipeline.share.version import BUMPS

__all__ = ["HELP", "add_arguments", "run"]

HELP = "pack a trained bundle into a versioned zip with sha256 manifest, provenance and TorchScript export"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle_dir", help="bundle folder (configs/, models/model.pt, docs/, LICENSE)")
    parser.add_argument("-o", "--output", default=None, help="output zip (default ./<name>_v<version>.zip)")
    parser.add_argument("--bump", choices=BUMPS, default=None, help="bump metadata version (needs --notes)")
    parser.add_argument("--notes", default=None, help="changelog entry for the new (or current) version")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output zip")
    parser.add_argument(
        "--export", choices=EXPORTS, default="auto", help="TorchScript export (auto: script, else trace)"
    )
    parser.add_argument("--input-shape", type=int, nargs="+", default=None, help="trace input shape, e.g. 1 1 96 96 96")
    parser.add_argument("--sign", default=None, metavar="KEY", help="sign the manifest with this key (pipeline keygen)")


def run(args: argparse.Namespace) -> int:
    try:
        result = pack_bundle(
            args.bundle_dir,
            args.output,
            bump=args.bump,
            notes=args.notes,
            force=args.force,
            export=args.export,
            input_shape=args.input_shape,
            sign=args.sign,
        )
    except ShareError as e:
        print(f"pack: {e}")
        return 1
    print(f"packed {result.bundle} {result.version} -> {result.zip_path}")
    print(f"  {result.files} files, TorchScript: {result.torchscript}")
    print(f"  sha256 {result.sha256}  (send this to the receiving site separately: verify --sha256)")
    if result.signer:
        print(f"  signed by key {result.signer}  (the receiver checks this fingerprint of your .pub with you)")
    else:
        print("  UNSIGNED: the receiving site will refuse it unless it passes --allow-unsigned (see pack --sign)")
    if result.skipped:
        print(
            f"  not packed (outputs/checkpoints/hidden): {', '.join(result.skipped[:10])}"
            + (" ..." if len(result.skipped) > 10 else "")
        )
    for item in result.needs_trust:
        print(f"  receiving site must review and --trust: {item}")
    return 0

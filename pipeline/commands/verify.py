"""``python -m pipeline verify ZIP|DIR``: check a shared bundle without trusting it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.share.report import ShareError
from pipeline.share.verify import verify_bundle

__all__ = ["HELP", "add_arguments", "run", "add_trust_arguments"]

HELP = "verify a shared bundle: signature, hashes, schema, weights, configs against your own templates (runs nothing)"


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """``--trust``, ``--trust-all``, ``--sha256``, ``--trusted-keys``, ``--allow-unsigned`` (shared with ``import``)."""
    parser.add_argument(
        "--trust",
        nargs="+",
        action="extend",
        default=[],
        metavar="ITEM",
        help="accept a reviewed item: its id as printed (fnmatch patterns allowed) or its exact value",
    )
    parser.add_argument(
        "--trust-all", action="store_true", help="accept every code item (hashes/zip/weights still checked)"
    )
    parser.add_argument(
        "--sha256", default=None, help="expected sha256 of the zip, received separately from the sender"
    )
    parser.add_argument(
        "--trusted-keys",
        default=None,
        metavar="DIR|FILE",
        help="senders' public keys (.pub from `pipeline keygen`, or a folder of them; default $PIPELINE_TRUSTED_KEYS)",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="accept a bundle not signed by a trusted key (NOTHING then proves who made it)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="bundle zip from `pipeline pack`, or an extracted bundle folder")
    add_trust_arguments(parser)
    parser.add_argument("--json", default=None, metavar="REPORT.json", help="also write the report as JSON")
    parser.add_argument("--failures-only", action="store_true", help="print only failed, trusted and warning items")


def run(args: argparse.Namespace) -> int:
    try:
        report = verify_bundle(
            args.path,
            args.trust,
            trust_all=args.trust_all,
            expected_sha256=args.sha256,
            trusted_keys=args.trusted_keys,
            allow_unsigned=args.allow_unsigned,
        )
    except ShareError as e:
        print(f"verify: {e}")
        return 1
    print(report.format(failures_only=args.failures_only))
    if args.allow_unsigned and not report.signer:
        print("WARNING: --allow-unsigned: nothing proves who made this bundle.")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0 if report.ok else 1

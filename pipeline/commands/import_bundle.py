"""``python -m pipeline import ZIP --to DIR``: verify a shared bundle, then install it as DIR/<name>."""

from __future__ import annotations

import argparse

from pipeline.commands.verify import add_trust_arguments
from pipeline.share.install import import_bundle
from pipeline.share.report import BundleVerificationError, ShareError

__all__ = ["HELP", "add_arguments", "run"]

HELP = "verify a bundle zip, then extract it safely to DIR/<bundle name> (never overwrites without --force)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("zip", help="bundle zip from `pipeline pack`")
    parser.add_argument("--to", required=True, metavar="DIR", help="folder that receives <bundle name>/")
    parser.add_argument("--force", action="store_true", help="replace an existing bundle of the same name")
    add_trust_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        target, report = import_bundle(
            args.zip,
            args.to,
            trust=args.trust,
            trust_all=args.trust_all,
            force=args.force,
            expected_sha256=args.sha256,
            trusted_keys=args.trusted_keys,
            allow_unsigned=args.allow_unsigned,
        )
    except BundleVerificationError as e:
        print(e.report.format(failures_only=True))
        print(f"import: refused, nothing installed ({args.zip} failed verification).")
        return 1
    except ShareError as e:
        print(f"import: {e}")
        return 1
    print(report.format(failures_only=True))
    if not report.signer:
        print("WARNING: imported WITHOUT proof of authorship (--allow-unsigned).")
    print(f"imported {report.bundle} {report.version} -> {target}")
    return 0

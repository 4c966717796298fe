"""``python -m pipeline keygen KEYFILE``: make an Ed25519 key pair to sign shared bundles (``pack --sign``)."""

from __future__ import annotations

import argparse

from pipeline.share.report import ShareError
from pipeline.share.signing import generate_key

__all__ = ["HELP", "add_arguments", "run"]

HELP = "make an Ed25519 key pair for signing bundles (pack --sign KEY; the receiver passes verify --trusted-keys)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", help="private key file to write (never overwritten); the public key goes to KEY.pub")
    parser.add_argument("--comment", default="", help="label stored in KEY.pub (e.g. 'site A radiology')")


def run(args: argparse.Namespace) -> int:
    try:
        private, public, fingerprint = generate_key(args.key, args.comment)
    except ShareError as e:
        print(f"keygen: {e}")
        return 1
    print(f"private key {private}  (keep it secret; it signs bundles as you)")
    print(f"public key  {public}  (give it to receiving sites)")
    print(f"fingerprint {fingerprint}  (read it out on the phone: the receiver compares it with verify's output)")
    return 0

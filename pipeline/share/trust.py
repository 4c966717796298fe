"""Whether a bundle *folder* may be used: fine-tuned from (:func:`pipeline.networks.weights.load_pretrained`) or run
(:func:`pipeline.inference.bundle.from_bundle`, ``pipeline infer --bundle``).

- A folder holding ``manifest.json`` was received (``pipeline import`` wrote it): it must pass the same verification
  as a zip (:func:`pipeline.share.verify.verify_bundle`: every file's hash, a signature by a trusted key unless
  ``allow_unsigned``, configs against the receiver's templates, finite weights). A file added or changed since the
  import fails it.
- A folder without ``manifest.json`` is a local bundle (your own training output). To *run* it, the configs that
  run must pass the template allow-list and the parameter rules (:mod:`pipeline.share.templates`; read as JSON, never
  evaluated). To *load weights* from it, nothing proves where it came from: refused.
- ``trust_unverified=True`` (``--trust-unverified``) uses the folder without any of this, logged as a WARNING.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.share.files import MANIFEST
from pipeline.share.report import FAIL, ShareError, VerifyReport
from pipeline.share.signing import PublicKey
from pipeline.share.templates import safe_text

__all__ = ["UnverifiedBundleError", "check_bundle_folder", "is_received"]

logger = logging.getLogger(__name__)

_FIX_RECEIVED = (
    "Fix: install the sender's zip again (`pipeline import ZIP --to DIR --force`) and keep that folder unchanged "
    "(write runs and predictions elsewhere), or pass --trust-unverified (trust_unverified=True) if you changed it "
    "yourself"
)
_FIX_LOAD = (
    "Fix: `pipeline import` the sender's zip and use that folder, pass the zip itself, or, if it is your own "
    "training output, trust_unverified=True (finetune.json: --trust_unverified true)"
)


class UnverifiedBundleError(ShareError, ValueError):
    """A bundle folder without the proof its use needs; the message (one line) names the folder, what failed and
    the fix. ``report`` holds the verification, when one ran."""

    def __init__(self, message: str, report: VerifyReport | None = None) -> None:
        super().__init__(message)
        self.report = report


def is_received(folder: str | os.PathLike) -> bool:
    """A received (imported) bundle folder: it holds ``manifest.json``."""
    return (Path(folder) / MANIFEST).is_file()


def _failures(report: VerifyReport, limit: int = 3) -> str:
    failed = [i for i in report.items if i.status == FAIL]
    shown = []
    for i in failed[:limit]:
        reason = re.split(r"\. If (?:you )?reviewed", i.reason)[0]  # verify's --trust hint is not this caller's
        shown.append(f"{safe_text(i.item, 120)}: {safe_text(reason, 240)}")
    text = "; ".join(shown)
    return text + (f" (+{len(failed) - limit} more)" if len(failed) > limit else "")


def check_bundle_folder(
    folder: str | os.PathLike,
    purpose: str,
    *,
    config_files: Sequence[str] = (),
    trust_unverified: bool = False,
    trust: Iterable[str] = (),
    trusted_keys: str | os.PathLike | list[PublicKey] | None = None,
    allow_unsigned: bool = False,
    templates: list[Path] | None = None,
) -> VerifyReport | None:
    """Refuse to use ``folder`` without proof (see the module doc); returns the report of the check that passed.

    Args:
        folder: the bundle folder.
        purpose: ``"load"`` (weights for fine-tuning) or ``"run"`` (its configs are evaluated, e.g. inference).
        config_files: for ``"run"``, the files under ``configs/`` that will be evaluated (``metadata.json`` is
            always checked); files that do not exist are left to the caller's own error.
        trust_unverified: use the folder as it is (logged as a WARNING).
        trust, trusted_keys, allow_unsigned: as for :func:`pipeline.share.verify.verify_bundle` (received folders).
        templates: template bundle folders (default :func:`pipeline.share.templates.template_dirs`).

    Raises:
        UnverifiedBundleError: the folder fails its check (one line: folder, failed items, fix).
    """
    from pipeline.share.verify import check_configs, verify_bundle

    root = Path(folder)
    if purpose not in ("load", "run"):
        raise ValueError(f"'purpose' must be 'load' or 'run', got {purpose!r}.")
    if trust_unverified:
        logger.warning(
            "UNVERIFIED bundle folder %s used (trust_unverified): no manifest, signature or template check; its "
            "%s as they are. Use this only for your own training output.",
            root, "configs run" if purpose == "run" else "weights are loaded",
        )  # fmt: skip
        return None
    if is_received(root):
        report = verify_bundle(
            root, trust, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned, check_network=False,
            templates=templates,
        )  # fmt: skip
        if not report.ok:
            raise UnverifiedBundleError(
                f"{root}: a received bundle folder (it holds {MANIFEST}) failed verification: {_failures(report)}. "
                + _FIX_RECEIVED,
                report,
            )
        logger.info(
            "bundle folder %s verified (%s)", root, f"signed by {report.signer}" if report.signer else "unsigned"
        )
        return report
    if purpose == "load":
        raise UnverifiedBundleError(
            f"{root}: not a verified bundle (no {MANIFEST}: nothing proves who made it or that it is unchanged). "
            + _FIX_LOAD
        )
    rels = [f"configs/{name}" for name in (*config_files, "metadata.json")]
    present = [rel for rel in dict.fromkeys(rels) if (root / rel).is_file()]
    report = VerifyReport(source=str(root), bundle=root.name)
    check_configs(report, root, present, templates=templates)
    if not report.ok:
        raise UnverifiedBundleError(
            f"{root}: a local bundle folder whose configs are not your templates' code with allowed parameters: "
            f"{_failures(report)}. Fix: run a bundle made from this toolkit's templates (or `pipeline import` the "
            "sender's zip), or pass --trust-unverified (trust_unverified=True) if you wrote these configs yourself",
            report,
        )
    return report

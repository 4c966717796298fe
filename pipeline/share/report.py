"""Errors and the verification report of bundle exchange.

:class:`ShareError` is every refused pack/verify/import request; :class:`VerifyReport` collects one
:class:`VerifyItem` per check with a status (``pass``, ``FAIL``, ``trusted``, ``warn``, ``skipped``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "PASS",
    "FAIL",
    "TRUSTED",
    "WARN",
    "SKIP",
    "ShareError",
    "BundleVerificationError",
    "VerifyItem",
    "VerifyReport",
]

PASS, FAIL, TRUSTED, WARN, SKIP = "pass", "FAIL", "trusted", "warn", "skipped"


class ShareError(Exception):
    """A pack/verify/import request that cannot be done; the message names the file or key and the fix."""


class BundleVerificationError(ShareError):
    """Verification failed; ``report`` holds every item."""

    def __init__(self, report: VerifyReport) -> None:
        failed = [f"{i.item}: {i.reason}" for i in report.items if i.status == FAIL]
        super().__init__(
            f"bundle {report.source} failed verification ({len(failed)} item(s)):\n  " + "\n  ".join(failed)
        )
        self.report = report


@dataclass
class VerifyItem:
    """One verification result: ``check`` (zip, files, manifest, schema, code, logging, weights, network,
    provenance), ``item`` (file, ``file#id`` or zip entry), ``status`` and ``reason``."""

    check: str
    item: str
    status: str
    reason: str = ""


@dataclass
class VerifyReport:
    """All verification results for one bundle; ``ok`` only if nothing failed."""

    source: str
    bundle: str = ""
    version: str = ""
    sha256: str = ""
    signer: str = ""  # fingerprint of the trusted key that signed the manifest
    items: list[VerifyItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.status == FAIL for i in self.items)

    def add(self, check: str, item: str, status: str, reason: str = "") -> None:
        self.items.append(VerifyItem(check, item, status, reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            **{k: v for k, v in asdict(self).items() if k != "items"},
            "items": [asdict(i) for i in self.items],
        }

    def format(self, failures_only: bool = False) -> str:
        """A plain-text table: status, check, item, reason, then a one-line verdict."""
        rows = [i for i in self.items if not failures_only or i.status in (FAIL, TRUSTED, WARN)]
        width = min(max([len(i.item) for i in rows] + [4]), 70)
        head = f"Verify {self.source}  bundle={self.bundle or '?'} version={self.version or '?'}"
        head += f"  sha256={self.sha256}" if self.sha256 else ""
        lines = [_printable(head + (f"  signed_by={self.signer}" if self.signer else "  UNSIGNED"))]
        lines += [
            f"{i.status:8} {i.check:10} {_printable(i.item):{width}}  {_printable(i.reason)}".rstrip() for i in rows
        ]
        counts = {s: sum(i.status == s for i in self.items) for s in (FAIL, TRUSTED, WARN, PASS)}
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"RESULT: {verdict} ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())})")
        return "\n".join(lines)


def _printable(text: str) -> str:
    """Control characters (terminal escape codes in a received key or file name) shown escaped, never sent raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__

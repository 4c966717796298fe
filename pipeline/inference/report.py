"""The report of a batch-inference run: ``summary.json``, ``failures.csv`` and the exit code.

An input that cannot be read, checked, preprocessed, inferred or written is one row of ``failures.csv``
(``input, stage, reason``; ``stage`` from :data:`STAGES`) and the run goes on; :attr:`InferenceReport.exit_code` is
``3`` when some failed. ``summary.json`` lists processed / skipped / failed cases with per-case times. The engine is
:class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.data.dicom_series import DicomError
from pipeline.inference.writers import atomic_write_chunks

__all__ = [
    "EXIT_FAILURES",
    "EXIT_OK",
    "STAGES",
    "InferenceFailed",
    "InferenceReport",
    "write_reports",
]

EXIT_OK, EXIT_FAILURES = 0, 3
STAGES = ("discover", "read", "check", "preprocess", "infer", "write")


class InferenceFailed(RuntimeError):
    """Raised by :meth:`InferenceReport.raise_if_failed` (bundle runs) when some inputs failed."""


@dataclass
class InferenceReport:
    """What a run did; ``summary.json`` and ``failures.csv`` hold the same."""

    input_dir: str
    output_dir: str
    processed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def exit_code(self) -> int:
        """``0`` when every input was processed or skipped, ``3`` when some failed."""
        return EXIT_FAILURES if self.failed else EXIT_OK

    def add(self, status: str, entry: dict[str, Any]) -> None:
        with self._lock:
            getattr(self, status).append(entry)

    def raise_if_failed(self) -> InferenceReport:
        """Raise :class:`InferenceFailed` (one line: how many, the first one, where all are) when some input failed."""
        if self.failed:
            raise InferenceFailed(
                f"{len(self.failed)} input(s) failed, e.g. {self.failed[0]['input']} ({self.failed[0]['stage']}: "
                f"{self.failed[0]['reason']}); all reasons are in {Path(self.output_dir) / 'failures.csv'}."
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        counts = {k: len(getattr(self, k)) for k in ("processed", "skipped", "failed", "ignored")}
        return {
            "input_dir": self.input_dir,
            "output_dir": self.output_dir,
            "counts": counts,
            "interrupted": self.interrupted,
            "seconds": round(self.seconds, 3),
            **{k: getattr(self, k) for k in ("processed", "skipped", "failed", "ignored")},
        }


class CaseError(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.stage, self.reason = stage, reason


def failure_reason(e: BaseException) -> str:
    """The root cause of ``e`` (MONAI wraps transform errors in 'applying transform ...'), on one line."""
    while e.__cause__ is not None and "applying transform" in str(e):
        e = e.__cause__
    text = " ".join(str(e).split()) or type(e).__name__
    return (text if isinstance(e, (DicomError, CaseError)) else f"{type(e).__name__}: {text}")[:600]


def write_reports(report: InferenceReport, model: dict[str, Any]) -> None:
    """Write ``summary.json`` (the report, with ``model`` under ``"model"``) and ``failures.csv`` atomically.

    Args:
        report: what the run did; the files go to its ``output_dir``.
        model: what ran, e.g. ``{"checkpoint": path or None, "labels": {"0": "background", ...}}``.
    """
    out = Path(report.output_dir)
    summary = {**report.to_dict(), "model": model}
    atomic_write_chunks(out / "summary.json", [json.dumps(summary, indent=2).encode() + b"\n"])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["input", "stage", "reason"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(report.failed)
    atomic_write_chunks(out / "failures.csv", [buf.getvalue().encode()])

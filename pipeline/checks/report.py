"""The result of the dataset checks: :class:`CheckReport` (every problem found, formatted one per line) and
:class:`DataCheckError` (raised when it holds errors); ``LEVELS`` (how much is read) and ``KINDS`` (problem kinds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.data.datalist import DatalistError, Problem

__all__ = ["KINDS", "LEVELS", "CheckReport", "DataCheckError"]

LEVELS = ("headers", "full", "off")
KINDS = (
    "missing_file", "unreadable", "truncated", "shape_mismatch", "affine_mismatch", "label_values", "float_labels",
    "non_finite", "wrong_dims", "wrong_channels", "empty_dataset", "duplicate_case", "datalist", "dicom_mixed_series",
    "dicom_geometry", "small_image", "patch_stride", "output_not_writable", "label_colors", "class_names",
    "bad_spacing", "background_only", "absent_class",
)  # fmt: skip


class DataCheckError(DatalistError):
    """The dataset or configuration has problems; ``.problems`` lists them all (the message too)."""

    def __init__(self, report: CheckReport) -> None:
        self.report, self.problems = report, report.errors
        super().__init__(report.summary(max_lines=40))


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found."""

    dataset_dir: str
    cases: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    def summary(self, max_lines: int | None = None) -> str:
        """Header line plus one line per problem (errors first)."""
        ordered = self.errors + self.warnings
        head = (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.dataset_dir} "
            f"({self.cases} case(s) checked)"
        )
        lines = [f"  - [{p.severity}] {p}" for p in ordered[:max_lines]]
        if max_lines is not None and len(ordered) > max_lines:
            lines.append(f"  ... and {len(ordered) - max_lines} more: python -m pipeline check-data {self.dataset_dir}")
        return "\n".join([head + (":" if lines else "."), *lines])

    def raise_if_errors(self) -> CheckReport:
        if self.errors:
            raise DataCheckError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "cases": self.cases,
            "problems": [
                {"kind": p.kind, "where": p.where, "message": p.message, "severity": p.severity} for p in self.problems
            ],
        }

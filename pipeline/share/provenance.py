"""Provenance of a packed bundle: whitelisted training numbers and software versions, nothing identifying.

Only the fields of :data:`PROVENANCE_FIELDS`, each well-formed for its kind, are copied from
``models/provenance_input.json``; anything else (paths, case ids, free text) is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.share.report import ShareError

__all__ = ["PROVENANCE_INPUT", "PROVENANCE_FIELDS", "build_provenance"]

logger = logging.getLogger(__name__)

PROVENANCE_INPUT = "models/provenance_input.json"
# field -> kind; anything else in provenance_input.json is dropped (it may hold paths or patient data).
PROVENANCE_FIELDS = {
    "training_cases": "count",
    "validation_cases": "count",
    "epochs": "count",
    "best_epoch": "count",
    "best_metric": "number",
    "key_metric": "label",
    "spacing": "stats",
    "intensity": "stats",
    "image_size": "stats",
    "class_frequencies": "per_class",
    "cases_missing_class": "per_class",
    "validation_metrics": "per_metric",
}
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_STAT = re.compile(r"mean|median|std|min|max|p\d{1,2}(_\d)?")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clean_field(kind: str, v: Any, classes: set[str]) -> Any:
    """The value if it is well-formed for ``kind``, else None (whole field dropped)."""
    if kind == "count":
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    if kind == "number":
        return v if _num(v) else None
    if kind == "label":
        return v if isinstance(v, str) and _LABEL.fullmatch(v) else None
    if not isinstance(v, dict) or not v:
        return None
    if kind == "stats":
        ok = all(
            _STAT.fullmatch(str(k)) and (_num(x) or (isinstance(x, list) and len(x) <= 8 and all(map(_num, x))))
            for k, x in v.items()
        )
        return v if ok else None
    if kind == "per_class":
        return v if all(str(k) in classes and _num(x) for k, x in v.items()) else None
    per = {k: _clean_field("per_class", x, classes) for k, x in v.items() if _LABEL.fullmatch(str(k))}
    return per if len(per) == len(v) and all(x is not None for x in per.values()) else None


def build_provenance(bundle: Path, meta: dict, weights_sha256: str, torchscript: str) -> dict[str, Any]:
    """Provenance for a packed bundle: whitelisted numbers from ``models/provenance_input.json`` and versions.

    Per-class keys must be class names from ``network_data_format.outputs.pred.channel_def`` (or their indices),
    so no case id, patient name, UID or path can travel as a key; free-text values are never copied.
    """
    import platform

    import monai
    import numpy
    import torch

    channel_def = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    classes = {str(k) for k in channel_def} | {str(v) for v in channel_def.values()} | {"mean", "macro", "micro"}
    raw: dict = {}
    src = bundle / PROVENANCE_INPUT
    if src.is_file():
        try:
            raw = json.loads(src.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ShareError(f"{PROVENANCE_INPUT}: not valid JSON ({e}). Fix or delete it, then pack.") from e
    else:
        logger.warning("%s not found: provenance will carry versions only", PROVENANCE_INPUT)
    training = {
        k: c for k, kind in PROVENANCE_FIELDS.items() if (c := _clean_field(kind, raw.get(k), classes)) is not None
    }
    dropped = len(raw) - len(training) if isinstance(raw, dict) else 0
    if dropped:
        logger.warning(
            "provenance: dropped %d field(s) not whitelisted or not well-formed (values not logged)", dropped
        )
    return {
        "bundle": bundle.name,
        "version": meta.get("version"),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": {
            "python": platform.python_version(),
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
        },
        "weights_sha256": weights_sha256,
        "torchscript": torchscript,
        "training": training,
        "fields_dropped": dropped,
    }

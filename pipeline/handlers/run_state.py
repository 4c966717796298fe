"""Training state that is not a module: RNG states (Python, NumPy, torch, CUDA, MONAI transforms), run info."""

from __future__ import annotations

import datetime
import json
import logging
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.utils.atomic import write_text

__all__ = ["get_rng_state", "plain", "set_rng_state", "write_run_info"]

logger = logging.getLogger(__name__)


def _np_state(state: Any) -> dict[str, Any]:
    return {"keys": torch.from_numpy(np.asarray(state[1], dtype=np.int64)), "pos": int(state[2]),
            "has_gauss": int(state[3]), "cached_gaussian": float(state[4])}  # fmt: skip


def _np_tuple(state: Mapping[str, Any]) -> tuple[Any, ...]:
    keys = np.asarray(state["keys"].numpy(), dtype=np.uint32)
    return "MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"])


def _random_states(root: Any) -> list[tuple[str, str, np.random.RandomState]]:
    """``(path, class name, RandomState)`` of every MONAI random transform reachable from ``root``."""
    from monai.transforms import Randomizable, Transform

    out: list[tuple[str, str, np.random.RandomState]] = []
    seen: set[int] = set()

    def walk(obj: Any, path: str, depth: int) -> None:
        if id(obj) in seen or depth > 8:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for i, child in enumerate(obj):
                walk(child, f"{path}[{i}]", depth + 1)
            return
        if not isinstance(obj, (Transform, Randomizable)):
            return
        rng = getattr(obj, "R", None)
        if isinstance(rng, np.random.RandomState) and id(rng) not in seen:
            seen.add(id(rng))
            out.append((path, type(obj).__name__, rng))
        for name, child in vars(obj).items():
            if isinstance(child, (Transform, Randomizable, list, tuple)):
                walk(child, f"{path}.{name}", depth + 1)

    walk(root, "transform", 0)
    return out


def get_rng_state(transform: Any = None) -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states, plus those of the MONAI random transforms in ``transform``."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss},
        "numpy": _np_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if transform is not None:
        state["transforms"] = {p: {"class": c, **_np_state(r.get_state())} for p, c, r in _random_states(transform)}
    return state


def set_rng_state(state: Mapping[str, Any], transform: Any = None) -> None:
    """Restore :func:`get_rng_state` output; transforms are matched by path and class (mismatches are logged)."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state(_np_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = dict(state.get("transforms", {}))
    if transform is None or not saved:
        return
    for path, cls, rng in _random_states(transform):
        entry = saved.pop(path, None)
        if entry is None or entry["class"] != cls:
            logger.warning("RNG state of transform %s (%s) not in the checkpoint; it continues unseeded.", path, cls)
            continue
        rng.set_state(_np_tuple(entry))
    if saved:
        logger.warning("checkpoint holds RNG states of transforms no longer present: %s", sorted(saved)[:5])


def plain(obj: Any) -> Any:
    """numpy scalars/arrays -> Python numbers/tensors, recursively, so ``weights_only=True`` can load the result."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# ------------------------------------------------------------------------------------------------ run info
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "pipeline"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_run_info(
    output_dir: str | Path, seed: int | None, resumed_from: str | None = None, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``output_dir/run_info.json``: seed, versions, command line and its config overrides, start time.

    Earlier entries (a resume, a fresh start after a failed one) are kept under ``history``: nothing is overwritten.
    The file stays with the run (``pipeline pack`` does not ship ``runs/``); it holds local paths from the command
    line.
    """
    from pipeline.bundle.overrides import bundle_overrides, command_line

    parsed = bundle_overrides()
    info: dict[str, Any] = {
        "seed": seed,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "resumed_from": resumed_from,
        "versions": _versions(),
        "argv": command_line(),
        "run_args": parsed[0] if parsed else None,
        "overrides": parsed[1] if parsed else None,
        **dict(extra or {}),
    }
    path = Path(output_dir) / "run_info.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            info["history"] = [*old.pop("history", []), old]
        except (OSError, ValueError) as e:  # unreadable: keep it beside the new one, never overwrite it
            logger.warning("%s is unreadable (%s); keeping it as %s.", path, e, path.with_suffix(".json.bad"))
            path.replace(path.with_suffix(".json.bad"))
    return write_text(path, json.dumps(info, indent=2, default=str) + "\n")

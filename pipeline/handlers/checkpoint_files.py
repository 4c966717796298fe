"""Checkpoint files: atomic writes, listing by epoch/iteration, validated ``weights_only`` loading."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pipeline.utils.atomic import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CORRUPT_DIR",
    "CheckpointError",
    "atomic_save",
    "describe_mismatch",
    "find_latest_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "move_aside",
    "remove_stale_temps",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pipeline-checkpoint/1"
_NAME = re.compile(r"^checkpoint_epoch=(\d+)(?:_iteration=(\d+))?\.pt$")
# temps of atomic_path (``.<name>.tmp-<random>``; ``.<name>.tmp`` from older versions) of checkpoints and the best model
_TEMP = re.compile(r"^\.(?:checkpoint_epoch=[^/]*\.pt|model\.pt)\.tmp(?:-[A-Za-z0-9_]+)?$")
CORRUPT_DIR = "corrupt"
_REQUIRED = ("network", "optimizer", "trainer")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read or restored; the message names the file and the fix."""


# ------------------------------------------------------------------------------------------------ files
def _key(path: Path) -> tuple[int, int, int]:
    m = _NAME.match(path.name)
    assert m is not None
    return int(m[1]), 0 if m[2] is None else 1, int(m[2] or 0)


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """``checkpoint_epoch=*.pt`` files in ``ckpt_dir``, oldest first (by epoch, then iteration)."""
    d = Path(ckpt_dir)
    return sorted((p for p in d.iterdir() if p.is_file() and _NAME.match(p.name)), key=_key) if d.is_dir() else []


_ZIP_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "unexpected pos")
_MB = 1 << 20


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts/lists): about the size ``torch.save`` writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _check_space(obj: Any, path: Path) -> None:
    """Refuse before writing when the folder's disk has less free space than the file needs (plus 1 MB)."""
    try:
        usage = shutil.disk_usage(path.parent)
    except OSError:
        return
    need = _tensor_bytes(obj) + _MB
    if usage.total > 0 and usage.free < need:
        raise CheckpointError(
            f"Not enough space to write {path}: it needs about {need / _MB:.0f} MB, {usage.free / _MB:.0f} MB are "
            f"free in {path.parent}; nothing was written and the previous file is intact. Fix: free space there (or "
            "pass another --ckpt_dir), then resume with --resume True."
        )


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: all or nothing.

    The free space of the folder's disk is checked first against the tensors' size.

    Raises:
        CheckpointError: not enough free space (checked before writing), or the write failed (e.g. disk full); the
            temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_space(obj, path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except BaseException as e:
        # torch's zip writer reports a full disk as RuntimeError ("[enforce fail at inline_container.cc] unexpected
        # pos"), not OSError
        zip_write = isinstance(e, RuntimeError) and any(s in str(e) for s in _ZIP_WRITE_ERRORS)
        if not isinstance(e, OSError) and not zip_write:
            raise
        if getattr(e, "errno", None) == errno.ENOSPC:
            hint = "the disk is full: free space"
        else:
            hint = "the disk is probably full: free space" if zip_write else "check the folder's permissions and space"
        reason = str(e).splitlines()[0][:200] if zip_write else (getattr(e, "strerror", None) or e)
        raise CheckpointError(
            f"Could not write {path} ({reason}); the previous file is intact and no partial "
            f"file was left. Fix: {hint} in {path.parent} (or pass another --ckpt_dir), then resume with --resume True."
        ) from e
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return path


def describe_mismatch(expected: Any, saved: Any) -> str:
    """How state dict ``saved`` differs from ``expected`` (the network's), in one line; "" when they fit or
    ``saved`` is no mapping. E.g. ``"8 keys missing (e.g. 'encoder.layer1.1.conv1.weight'), 1 of another shape
    ('head.weight': saved (2, 8), network (3, 8))"``."""
    if not isinstance(saved, dict) or not isinstance(expected, dict):
        return ""
    shape = lambda t: tuple(getattr(t, "shape", ()))  # noqa: E731
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    other = [k for k in expected if k in saved and shape(expected[k]) != shape(saved[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing from the checkpoint (e.g. {missing[0]!r})")
    if unexpected:
        parts.append(f"{len(unexpected)} key(s) the network does not have (e.g. {unexpected[0]!r})")
    if other:
        k = other[0]
        parts.append(f"{len(other)} of another shape ({k!r}: saved {shape(saved[k])}, network {shape(expected[k])})")
    return ", ".join(parts)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a training checkpoint with ``weights_only=True`` (on CPU).

    Raises:
        CheckpointError: unreadable/truncated file, or not a checkpoint written by :class:`TrainingCheckpointer`.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zips, pickles and I/O errors surface as many types
        raise CheckpointError(
            f"{path}: not loadable ({type(e).__name__}: {str(e)[:160]}); probably truncated (killed while writing, "
            "or copied incompletely)."
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or any(k not in ckpt for k in _REQUIRED):
        got = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a {CHECKPOINT_FORMAT} training checkpoint (got {got}).")
    return ckpt


def find_latest_checkpoint(
    ckpt_dir: str | Path, corrupt: list[Path] | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``ckpt_dir`` that loads, with its content; invalid newer ones are skipped with a
    warning naming them (and appended to ``corrupt`` when given). None when there is none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s Trying the previous one.", path.name, e)
            if corrupt is not None:
                corrupt.append(path)
    return None


def move_aside(paths: list[Path], ckpt_dir: str | Path) -> list[Path]:
    """Move ``paths`` into ``ckpt_dir/corrupt/`` (never deleted, never overwriting a file there: a name taken already
    gets ``.1``, ``.2``, ...); returns the new paths."""
    folder = Path(ckpt_dir) / CORRUPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in paths:
        target, n = folder / path.name, 0
        while target.exists():
            n += 1
            target = folder / f"{path.name}.{n}"
        os.rename(path, target)  # same file system: a rename, not a copy
        moved.append(target)
    return moved


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest checkpoint file name-wise (not validated), or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def remove_stale_temps(ckpt_dir: str | Path) -> list[Path]:
    """Delete temp files left by a checkpoint or best-model write that was killed (``.checkpoint_epoch=K.pt.tmp-XXXX``,
    ``.model.pt.tmp-XXXX``, as :func:`pipeline.utils.atomic.atomic_path` names them); returns them."""
    d = Path(ckpt_dir)
    stale = [p for p in d.glob(".*") if p.is_file() and _TEMP.match(p.name)] if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale

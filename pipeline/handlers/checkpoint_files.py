"""Checkpoint files: atomic writes, listing by epoch/iteration, validated ``weights_only`` loading."""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.utils.atomic import atomic_path

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "atomic_save",
    "find_latest_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_stale_temps",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pipeline-checkpoint/1"
_NAME = re.compile(r"^checkpoint_epoch=(\d+)(?:_iteration=(\d+))?\.pt$")
_TEMP = re.compile(r"^\.checkpoint_epoch=.*\.tmp$")
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


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then ``os.replace``: all or nothing.

    Raises:
        CheckpointError: the write failed (e.g. disk full); the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
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


def find_latest_checkpoint(ckpt_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``ckpt_dir`` that loads, with its content; invalid newer ones are skipped with a
    warning naming them. None when there is none."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s Trying the previous one.", path.name, e)
    return None


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest checkpoint file name-wise (not validated), or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def remove_stale_temps(ckpt_dir: str | Path) -> list[Path]:
    """Delete temp files left by a checkpoint write that was killed; returns them."""
    d = Path(ckpt_dir)
    stale = [p for p in d.glob(".checkpoint_epoch=*") if _TEMP.match(p.name)] if d.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale

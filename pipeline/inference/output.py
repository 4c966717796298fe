"""The output folder of batch inference: checked before any work, and locked for the whole run.

:func:`check_output_dir` makes sure the folder exists (or can be created), is a folder and takes a file (a write
probe: permissions, a read-only file system and a full disk all show there), before a model is loaded or a case read.
:func:`output_lock` holds ``fcntl.flock`` on ``<out>/.pipeline-infer.lock`` (the file holds the owner's PID) for the
run, so a second run on the same folder stops at once instead of deleting the first one's temp files and redoing its
work; the kernel drops the lock when its process dies, so the lock file of a killed run never blocks. The engine is
:class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["LOCK_NAME", "OutputFolderError", "check_output_dir", "output_lock"]

LOCK_NAME = ".pipeline-infer.lock"


class OutputFolderError(RuntimeError):
    """The output folder cannot be used (not creatable, not writable, locked by another run); one line with the fix."""


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _write_probe(folder: Path) -> None:
    """Create, write, fsync and delete a hidden file in ``folder``."""
    probe = folder / f".pipeline-write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def check_output_dir(output_dir: str | Path) -> Path:
    """Create ``output_dir`` if needed and check that files can be written there; returns it resolved.

    Raises:
        OutputFolderError: it is a file, cannot be created, or a write probe fails (permission denied, read-only file
            system, no space left); the message names the folder and the fix.
    """
    out = Path(output_dir).resolve()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(
            f"Output folder {out} is a file, expected a folder. Fix: pass another output folder or move the file."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputFolderError(
            f"Output folder {out} cannot be created ({_reason(e)}). Fix: create it yourself, or pass a folder on a "
            "writable disk."
        ) from e
    try:
        _write_probe(out)
    except OSError as e:
        hint = {
            errno.EACCES: f"make it writable (chmod u+w {out}) or pass another output folder",
            errno.EPERM: f"make it writable (chmod u+w {out}) or pass another output folder",
            errno.EROFS: "pass a folder on a writable file system",
            errno.ENOSPC: "free space on its disk or pass a folder on another disk",
            errno.EDQUOT: "free space on its disk or pass a folder on another disk",
        }.get(e.errno or 0, "check its permissions and free space, or pass another output folder")
        raise OutputFolderError(
            f"Output folder {out} is not writable ({_reason(e)}): nothing was inferred. Fix: {hint}."
        ) from e
    return out


@contextlib.contextmanager
def output_lock(output_dir: str | Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<output_dir>/.pipeline-infer.lock`` (which holds this PID) for the block.

    Raises:
        OutputFolderError: another live process holds the lock; the message names the folder and its PID.
    """
    path = Path(output_dir) / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputFolderError(
                f"Cannot create the lock file {path} ({_reason(e)}). Fix: make {output_dir} writable."
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderError(
                f"Output folder {output_dir} is in use by another inference run (PID {holder}, lock {path}). Fix: "
                "wait for it to finish, or pass another output folder (a rerun later skips the cases it finished)."
            ) from e
        try:  # the file may have been removed by its previous holder between our open and flock: lock the new one
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the unlock, so a waiting run never locks a file that is about to go
        os.close(fd)

"""All-or-nothing file writes: a hidden temp file in the target's folder, fsync, then ``os.replace``.

Every output the toolkit writes (masks, metrics, reports, checkpoints, bundle zips, JSON) goes through here, so a
crash, ``KeyboardInterrupt``, SIGTERM or a full disk never leaves a half-written file under the real name, and an
existing file at that name stays intact until the new one is complete.

Example::

    with atomic_path(out / "model.zip") as tmp:
        write_zip(tmp)                      # any writer that takes a path
    write_text(out / "summary.json", text)  # the common cases
    write_bytes(out / "mask.nii.gz", chunks)

Temp files are named ``.<name><marker><random>`` in the same folder (same file system, so the rename is atomic);
pass ``marker`` to make them findable for clean-up after a hard kill (see ``pipeline.inference.engine``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["DEFAULT_MARKER", "atomic_path", "write_bytes", "write_text"]

DEFAULT_MARKER = ".tmp-"

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, marker: str = DEFAULT_MARKER, fsync: bool = True, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temp path next to ``path``; when the block ends normally, fsync it and rename it onto ``path``.

    Args:
        path: the final file; its folder is created.
        marker: part of the temp file's name (``.<name><marker>...``).
        fsync: flush the temp file to disk before the rename (off only for throwaway files).
        overwrite: if False, raise ``FileExistsError`` instead of replacing an existing ``path`` (checked after the
            temp file is complete, so a slow write cannot race past it unnoticed).

    Raises:
        FileExistsError: ``overwrite=False`` and ``path`` exists; nothing was changed.

    On any exception (including ``KeyboardInterrupt``) the temp file is removed and ``path`` is untouched. The file
    gets the usual permissions (``0o666`` minus the umask), not ``mkstemp``'s ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{marker}")
    os.close(fd)
    try:
        yield Path(tmp)
        if fsync:
            _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        if not overwrite and path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it.")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike[str], chunks: bytes | Iterable[bytes], *, marker: str = DEFAULT_MARKER) -> Path:
    """Write ``chunks`` (bytes, or an iterable of them, e.g. a streaming encoder) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, marker=marker) as tmp, open(tmp, "wb") as f:
        for chunk in [chunks] if isinstance(chunks, bytes | bytearray) else chunks:
            f.write(chunk)
    return path


def write_text(path: str | os.PathLike[str], text: str, *, marker: str = DEFAULT_MARKER) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path, marker=marker) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return path

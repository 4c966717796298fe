"""Bundle zip files: entry checks before extraction, safe extraction, and reproducible writing.

Nothing is extracted before :func:`check_zip_entries` has checked every entry (names, links, special files,
encryption, declared sizes, compression ratio); :func:`safe_extract` never overwrites and stops at the declared
size. Packed zips hold regular files only, with fixed timestamps and modes.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.share.files import bundle_files
from pipeline.share.report import ShareError
from pipeline.utils.atomic import atomic_path

__all__ = ["ZipLimits", "check_zip_entries", "read_zip_bytes", "safe_extract"]

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ZipLimits:
    """Limits a shared zip must stay within (zip bombs, absurd declared sizes)."""

    max_entries: int = 10_000
    max_file_bytes: int = 4 * 2**30
    max_total_bytes: int = 8 * 2**30
    max_ratio: float = 200.0
    ratio_min_bytes: int = 2**20
    max_zip_bytes: int = 4 * 2**30  # the zip is read into memory once, hashed, and opened from those bytes


def _entry_reason(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    name = info.filename
    parts = name.rstrip("/").split("/")
    mode = info.external_attr >> 16
    if "\\" in name or any(ord(c) < 32 for c in name):
        return "backslash or control character in the name"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in parts:
        return "'..' path component (path traversal)"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' path component"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file (device, fifo or socket)"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    if info.file_size > limits.max_file_bytes:
        return f"declared size {info.file_size} bytes exceeds {limits.max_file_bytes}"
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_min_bytes and ratio > limits.max_ratio:
        return f"compression ratio {ratio:.0f}:1 exceeds {limits.max_ratio:.0f}:1 (zip bomb?)"
    return None


def check_zip_entries(zf: zipfile.ZipFile, limits: ZipLimits = ZipLimits()) -> tuple[str | None, list[tuple]]:
    """Check every entry of a bundle zip without extracting anything.

    Returns:
        ``(top_folder, problems)``: the single top-level folder (the bundle name) or None, and a list of
        ``(entry_name, reason)`` for every refused entry (empty when the archive is safe to extract).
    """
    infos = zf.infolist()
    problems: list[tuple] = []
    if len(infos) > limits.max_entries:
        return None, [("(archive)", f"{len(infos)} entries exceeds {limits.max_entries}")]
    seen: set[str] = set()
    tops: set[str] = set()
    total = packed = 0
    for info in infos:
        key = info.filename.rstrip("/").casefold()
        if key in seen:
            problems.append((info.filename, "duplicate entry name"))
        seen.add(key)
        if reason := _entry_reason(info, limits):
            problems.append((info.filename, reason))
            continue
        if "/" not in info.filename.rstrip("/") and not info.is_dir():
            problems.append((info.filename, "file at the archive root (expected <bundle_name>/...)"))
        tops.add(info.filename.split("/", 1)[0])
        total += info.file_size
        packed += info.compress_size
    if total > limits.max_total_bytes:
        problems.append(("(archive)", f"total uncompressed size {total} exceeds {limits.max_total_bytes}"))
    elif total > limits.ratio_min_bytes and total / max(packed, 1) > limits.max_ratio:
        problems.append(
            ("(archive)", f"overall compression ratio {total / max(packed, 1):.0f}:1 exceeds {limits.max_ratio:.0f}:1")
        )
    if len(tops) != 1:
        problems.append(("(archive)", f"expected one top folder (the bundle name), got {sorted(tops)}"))
        return None, problems
    top = tops.pop()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", top):
        problems.append((top, "top folder is not a plain bundle name"))
    return top, problems


def read_zip_bytes(path: Path, limits: ZipLimits = ZipLimits()) -> bytes:
    """The zip's bytes, read once (hash them and open the zip from them: no second read by path can differ).

    Raises:
        ValueError: the file is larger than ``limits.max_zip_bytes``.
        OSError: it cannot be read.
    """
    with Path(path).open("rb") as f:
        data = f.read(limits.max_zip_bytes + 1)
    if len(data) > limits.max_zip_bytes:
        raise ValueError(f"zip is larger than {limits.max_zip_bytes} bytes; refused")
    return data


def safe_extract(zf: zipfile.ZipFile, dest: Path, limits: ZipLimits = ZipLimits()) -> None:
    """Extract a zip already passed by :func:`check_zip_entries` into ``dest`` (no overwrites, no links).

    Raises:
        ValueError: an entry escapes ``dest``, exists already, or is larger than declared.
    """
    root = dest.resolve()
    for info in zf.infolist():
        target = (root / info.filename).resolve()
        if root not in target.parents:
            raise ValueError(f"zip entry {info.filename!r} escapes {root}; refused.")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as src, target.open("xb") as dst:
            while chunk := src.read(1 << 20):
                written += len(chunk)
                if written > min(info.file_size, limits.max_file_bytes):
                    raise ValueError(f"zip entry {info.filename!r} is larger than declared; refused.")
                dst.write(chunk)


def write_zip(stage: Path, name: str, out: Path, force: bool) -> None:
    try:
        with atomic_path(out, overwrite=force) as tmp, zipfile.ZipFile(tmp, "w") as zf:
            for rel in bundle_files(stage)[0]:
                info = zipfile.ZipInfo(f"{name}/{rel}", date_time=_ZIP_TIME)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_STORED if rel.endswith((".pt", ".ts")) else zipfile.ZIP_DEFLATED
                size = (stage / rel).stat().st_size
                with (stage / rel).open("rb") as src, zf.open(info, "w", force_zip64=size > 2**31) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except FileExistsError:
        raise ShareError(f"{out} exists; refusing to overwrite. Pass --force or choose another -o.") from None

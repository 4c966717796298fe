"""Bundle layout, hashing and config loading shared by pack, verify and import.

Names of the files a packed bundle carries (``manifest.json``, ``provenance.json``, the bundled metadata schema),
sha256 of a file, safe JSON/YAML loading, and a link-free listing of a bundle folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_SHA256",
    "MANIFEST",
    "PROVENANCE",
    "WEIGHT_SUFFIXES",
    "schema_path",
    "sha256_file",
    "load_config",
]

SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_SHA256 = "d95c74c2915faef04ff6a2d6bd865da922bc8cd5afb4a0719b2dc6e1220528e7"  # integrity of the bundled copy
MANIFEST = "manifest.json"
PROVENANCE = "provenance.json"
WEIGHT_SUFFIXES = (".pt", ".pth")


@contextmanager
def schema_path() -> Iterator[Path]:
    """Path to the bundled metadata schema (``pipeline/schemas/meta_schema_20240725.json``)."""
    with resources.as_file(resources.files("pipeline") / "schemas" / SCHEMA_NAME) as p:
        yield Path(p)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_config(path: Path) -> Any:
    """Parse a JSON or YAML config (YAML with ``safe_load`` only)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def bundle_files(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, links/special files) under root as posix relative paths; never follows links."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                odd.append(rel)
            elif name in filenames:
                files.append(rel)
    return sorted(files), sorted(odd)


def network_config(root: Path) -> Path | None:
    for name in ("inference.json", "train.json", "inference.yaml", "train.yaml"):
        p = root / "configs" / name
        if p.is_file() and "network_def" in (load_config(p) or {}):
            return p
    return None

"""File types in a shared bundle: image data (by suffix or DICOM magic) and code, pickles or binaries.

Only the types of :data:`ALLOWED_SUFFIXES` and :data:`ALLOWED_PLAIN_NAMES` ship; their contents are checked by
:mod:`pipeline.share.filerules`. Anything else (``.svg``, ``.pdf``, ``.onnx``, ``.csv``, code, pickles) is refused.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DATA_SUFFIXES", "ALLOWED_SUFFIXES", "ALLOWED_PLAIN_NAMES", "data_file_reason", "file_type_reason"]

DATA_SUFFIXES = (".nii", ".nii.gz", ".dcm", ".dicom", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".npy", ".npz")
#: every type has a content rule (:mod:`pipeline.share.filerules`, the config check for configs, the weights check for
#: ``.pt``/``.pth``); ``.yaml``/``.yml``/``.cfg`` pass here only to be named by the config check
ALLOWED_SUFFIXES = frozenset(
    ".json .yaml .yml .conf .cfg .md .txt .rst .pt .pth .ts .safetensors .png .jpg .jpeg .gif".split()  # noqa: SIM905
)
ALLOWED_PLAIN_NAMES = frozenset({"LICENSE", "NOTICE", "README", "AUTHORS", "CHANGELOG"})


def data_file_reason(path: Path) -> str | None:
    """Why ``path`` looks like image data (by suffix, or DICOM magic ``DICM`` at byte 128), else None."""
    name = path.name.lower()
    if name.endswith(DATA_SUFFIXES):
        return f"image/array data ({name[name.index('.') :] if '.' in name else name})"
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return None
    return "DICOM file (magic 'DICM' at byte 128)" if head[128:132] == b"DICM" else None


def file_type_reason(rel: str) -> str | None:
    """Why a bundle file type is not expected in a shared bundle (code, pickles, binaries), else None."""
    name = rel.rsplit("/", 1)[-1]
    suffix = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if suffix in ALLOWED_SUFFIXES or name in ALLOWED_PLAIN_NAMES:  # the full name: LICENSE.py is code
        return None
    if suffix in (".py", ".pyc", ".pyd", ".so", ".dll", ".dylib", ".sh", ".bat", ".ps1", ".exe"):
        return f"code file ({suffix}); it runs if a config imports or calls it"
    if suffix in (".pkl", ".pickle", ".joblib", ".dill"):
        return f"pickle file ({suffix}); loading it can run code"
    return f"unexpected file type {suffix or '(no suffix)'!r}"

"""A rule for the contents of every file type a shared bundle may carry; nothing here loads or runs a file.

- ``*.ts`` (TorchScript): a zip whose members are exactly the layout ``torch.jit.save`` writes (``<top>/data.pkl``,
  ``constants.pkl``, ``version``, ``byteorder``, ``data/<n>``, ``constants/<n>``, ``code/__torch__/**.py``,
  ``extra/<name>``, ``traced_inputs[.pkl|/<n>]``, ``.data/serialization_id|version``), one top folder, no
  ``.debug_pkl`` (sender paths), no absolute paths in the code, bounded sizes and compression ratio. Never
  ``torch.jit.load``-ed.
- ``*.safetensors``: the header parsed without torch (8-byte little-endian length <= 100 MB, a JSON object,
  dtypes of :data:`SAFETENSORS_DTYPES`, ``data_offsets`` contiguous from 0 to the end of the file, shape x dtype size
  = byte span); floating values finite.
- images (``.png``, ``.jpg``/``.jpeg``, ``.gif``): magic bytes of the suffix, at most :data:`MAX_IMAGE_BYTES`, and
  Pillow's header check with its decompression-bomb limit (an error, not a warning).
- text (``.md``, ``.txt``, ``.rst``, ``LICENSE``, ``README``, ...) and ``.json``/``.conf``: UTF-8, no control
  characters but ``\\n``, ``\\r``, ``\\t``, at most :data:`MAX_TEXT_BYTES`.

Any other type is refused by :func:`pipeline.share.filetypes.file_type_reason`.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from pathlib import Path

__all__ = [
    "IMAGE_MAGIC",
    "MAX_IMAGE_BYTES",
    "MAX_TEXT_BYTES",
    "SAFETENSORS_DTYPES",
    "TEXT_SUFFIXES",
    "content_problem",
    "image_problem",
    "safetensors_problem",
    "text_problem",
    "torchscript_problem",
]

MAX_TEXT_BYTES = 16 * 2**20
MAX_IMAGE_BYTES = 32 * 2**20
MAX_IMAGE_PIXELS = 50_000_000
MAX_TS_CODE_BYTES = 4 * 2**20
MAX_TS_ENTRIES = 20_000
MAX_TS_BYTES = 4 * 2**30
MAX_SAFETENSORS_HEADER = 100_000_000
TEXT_SUFFIXES = (".md", ".txt", ".rst", ".json", ".conf")
#: safetensors dtype -> bytes per element (no object or string types exist in the format)
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip
_FLOAT_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8"}
IMAGE_MAGIC = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
}
_PIL_FORMAT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TS_MEMBER = re.compile(
    r"(data\.pkl|constants\.pkl|version|byteorder|traced_inputs\.pkl|\.data/(serialization_id|version)"
    r"|(data|constants|traced_inputs)/\d+|extra/[A-Za-z0-9_.-]{1,128}"
    r"|code/__torch__(/[A-Za-z0-9_]{1,128}){0,32}\.py)"
)
_TS_ABSPATH = re.compile(rb"""["'](/|~/|[A-Za-z]:[\\/])""")


def text_problem(path: Path, limit: int = MAX_TEXT_BYTES) -> str | None:
    """Why ``path`` is not plain text: too large, not UTF-8, or control characters other than newline/tab."""
    size = path.stat().st_size
    if size > limit:
        return f"text file of {size} bytes exceeds {limit}"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start}); text files must be UTF-8"
    if m := _CONTROL.search(text):
        return f"control character {m.group()!r} at offset {m.start()} (only \\n, \\r, \\t are allowed in text)"
    return None


def image_problem(path: Path, suffix: str) -> str | None:
    """Why ``path`` is not an image of its suffix: magic bytes, size, or Pillow's header check (decompression
    bombs are errors)."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        return f"image of {size} bytes exceeds {MAX_IMAGE_BYTES}"
    with path.open("rb") as f:
        head = f.read(16)
    if not head.startswith(IMAGE_MAGIC[suffix]):
        return f"content is not a {suffix} image (magic bytes {head[:8].hex()}); the suffix must match the content"
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PIL_FORMAT[suffix]]) as im:
                w, h = im.size
                frames = getattr(im, "n_frames", 1)
    except Exception as e:  # UnidentifiedImageError, DecompressionBomb*, truncated headers
        return f"not a readable {suffix} image ({type(e).__name__})"
    if w * h * frames > MAX_IMAGE_PIXELS:
        return f"image of {w}x{h} pixels x {frames} frame(s) exceeds {MAX_IMAGE_PIXELS} pixels"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a well-formed safetensors file with finite values (parsed without torch)."""
    import numpy as np

    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return "shorter than the 8-byte header length"
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_SAFETENSORS_HEADER or n > size - 8:
            return f"header length {n} exceeds {min(MAX_SAFETENSORS_HEADER, size - 8)} bytes"
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return "header is not JSON"
        if not isinstance(header, dict):
            return "header is not a JSON object"
        header.pop("__metadata__", None)
        spans = []
        for name, entry in header.items():
            label = json.dumps(name)[:80]
            try:
                dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
                count = math.prod(int(s) for s in shape)
                if any(not isinstance(s, int) or s < 0 for s in shape) or not all(
                    isinstance(o, int) for o in (start, end)
                ):
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                return f"tensor {label}: needs dtype, shape (integers >= 0) and data_offsets [start, end]"
            if dtype not in SAFETENSORS_DTYPES:
                return f"tensor {label}: dtype {json.dumps(dtype)[:20]} not in {sorted(SAFETENSORS_DTYPES)}"
            if end - start != count * SAFETENSORS_DTYPES[dtype] or start < 0:
                return f"tensor {label}: data_offsets [{start}, {end}] do not hold shape {shape} of {dtype}"
            spans.append((start, end, name, dtype))
        spans.sort()
        pos = 0
        for start, end, _, _ in spans:
            if start != pos:
                return f"data_offsets are not contiguous (gap or overlap at byte {pos} of the data)"
            pos = end
        if pos != size - 8 - n:
            return f"the tensors cover {pos} bytes, the file holds {size - 8 - n} after the header"
        for start, end, name, dtype in spans:
            if dtype in _FLOAT_DTYPES and end > start:
                f.seek(8 + n + start)
                values = np.frombuffer(f.read(end - start), dtype=_FLOAT_DTYPES[dtype])
                if not np.isfinite(values).all():
                    return f"tensor {json.dumps(name)[:80]}: NaN/Inf values"
    return None


def torchscript_problem(path: Path) -> str | None:
    """Why ``path`` is not a TorchScript archive of the layout ``torch.jit.save`` writes (see the module doc)."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not infos or len(infos) > MAX_TS_ENTRIES:
                return f"{len(infos)} members (expected 1..{MAX_TS_ENTRIES})"
            tops = {i.filename.split("/", 1)[0] for i in infos}
            if len(tops) != 1 or not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", next(iter(tops))):
                return f"members must share one plain top folder, found {len(tops)}"
            total = 0
            for info in infos:
                rel = info.filename.split("/", 1)[1] if "/" in info.filename else ""
                shown = json.dumps(info.filename)[:100]
                if rel.endswith(".debug_pkl"):
                    return f"member {shown}: debug info (sender paths); re-pack with `pipeline pack`, which strips it"
                if not _TS_MEMBER.fullmatch(rel) or info.is_dir() or info.flag_bits & 0x1:
                    return f"member {shown} is not part of the TorchScript layout torch.jit.save writes"
                if info.file_size > 2**20 and info.file_size > 200 * max(info.compress_size, 1):
                    return f"member {shown}: compression ratio over 200:1 (zip bomb?)"
                total += info.file_size
                if rel.startswith("code/"):
                    if info.file_size > MAX_TS_CODE_BYTES:
                        return f"member {shown}: {info.file_size} bytes of code exceeds {MAX_TS_CODE_BYTES}"
                    code = zf.read(info)
                    if _TS_ABSPATH.search(code):
                        return f"member {shown}: an absolute path in the code (sender paths must not ship)"
            if total > MAX_TS_BYTES:
                return f"members declare {total} bytes, more than {MAX_TS_BYTES}"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        return f"not a readable TorchScript zip ({type(e).__name__})"
    return None


def content_problem(path: Path, rel: str) -> str | None:
    """The content rule of ``rel`` by its type (``None``: fine, or a type this module has no rule for)."""
    name = rel.rsplit("/", 1)[-1]
    suffix = ("." + name.rsplit(".", 1)[-1].lower()) if "." in name else ""
    if suffix == ".ts":
        return torchscript_problem(path)
    if suffix == ".safetensors":
        return safetensors_problem(path)
    if suffix in IMAGE_MAGIC:
        return image_problem(path, suffix)
    if suffix in TEXT_SUFFIXES or "." not in name:
        return text_problem(path)
    return None

"""Every file type a shared bundle may carry has a content rule (:mod:`pipeline.share.filerules`), proven with crafted
files: TorchScript layout, safetensors headers, images by magic bytes and size, text; anything else is refused."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.share.filerules import (
    content_problem,
    image_problem,
    safetensors_problem,
    text_problem,
    torchscript_problem,
)
from pipeline.share.filetypes import file_type_reason


# ------------------------------------------------------------------------------------------------ TorchScript
@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``torch.jit.save`` writes for a small scripted module (with an extra file), debug info stripped as
    ``pipeline pack`` does."""
    path = tmp_path_factory.mktemp("ts") / "model.ts"
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU()))
    torch.jit.save(net, str(path), _extra_files={"metadata.json": "{}"})
    entries = _entries(path)
    assert any(n.endswith(".debug_pkl") for n in entries)  # torch writes them: sender paths inside
    return _write(path.with_name("stripped.ts"), {n: d for n, d in entries.items() if not n.endswith(".debug_pkl")})


def _entries(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_torchscript_layout_of_torch_jit_save_passes(scripted: Path) -> None:
    assert torchscript_problem(scripted) is None
    traced = torch.jit.trace(torch.nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 4, 4))
    path = scripted.with_name("traced.ts")
    torch.jit.save(traced, str(path))
    stripped = _write(path.with_name("t2.ts"), {n: d for n, d in _entries(path).items() if "debug_pkl" not in n})
    assert torchscript_problem(stripped) is None


@pytest.mark.parametrize(
    "edit, reason",
    [
        (lambda e, top: e.update({f"{top}/code/__torch__/x.py.debug_pkl": b"\x80"}), "debug info"),
        (lambda e, top: e.update({f"{top}/evil.py": b"import os"}), "not part of the TorchScript layout"),
        (lambda e, top: e.update({f"{top}/code/run.sh": b"touch x"}), "not part of the TorchScript layout"),
        (lambda e, top: e.update({"other/data.pkl": b"x"}), "one plain top folder"),
        (lambda e, top: e.update({f"{top}/code/__torch__/y.py": b"f = '/home/site_a/x.py'"}), "absolute path"),
        (lambda e, top: e.update({f"{top}/code/__torch__/../../z.py": b"x"}), "not part of the TorchScript layout"),
    ],
)
def test_torchscript_outside_the_layout_is_refused(scripted: Path, tmp_path: Path, edit, reason: str) -> None:
    entries = _entries(scripted)
    top = next(iter(entries)).split("/")[0]
    edit(entries, top)
    problem = torchscript_problem(_write(tmp_path / "m.ts", entries))
    assert problem is not None and reason in problem
    (tmp_path / "junk.ts").write_bytes(b"not a zip")
    assert "not a readable TorchScript zip" in (torchscript_problem(tmp_path / "junk.ts") or "")


# ------------------------------------------------------------------------------------------------ safetensors
def _safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def test_safetensors_written_by_the_library_passes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2, 3), "b": torch.arange(4, dtype=torch.int64)}, str(tmp_path / "w.safetensors"))
    assert safetensors_problem(tmp_path / "w.safetensors") is None
    save_file({"a": torch.tensor([1.0, float("nan")])}, str(tmp_path / "nan.safetensors"))
    assert "NaN/Inf" in (safetensors_problem(tmp_path / "nan.safetensors") or "")


F32x2 = np.ones(2, "<f4").tobytes()


@pytest.mark.parametrize(
    "header, data, length, reason",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F32x2, 2**40, "header length"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, F32x2, 3, "header is not JSON"),
        ({"a": {"dtype": "OBJECT", "shape": [2], "data_offsets": [0, 8]}}, F32x2, None, "dtype"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, F32x2, None, "do not hold shape"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, F32x2, None, "not contiguous"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            },
            F32x2,
            None,
            "not contiguous",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, F32x2, None, "the tensors cover 4 bytes"),
        ({"a": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, F32x2, None, "integers >= 0"),
        ([1, 2], F32x2, None, "not a JSON object"),
    ],
)
def test_crafted_safetensors_headers_are_refused(tmp_path: Path, header, data: bytes, length, reason: str) -> None:
    problem = safetensors_problem(_safetensors(tmp_path / "w.safetensors", header, data, length))
    assert problem is not None and reason in problem


# ------------------------------------------------------------------------------------------------ images and text
def _png(size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    return buf.getvalue()


def test_images_must_be_what_their_suffix_says(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png())
    assert image_problem(tmp_path / "a.png", ".png") is None
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "JPEG")
    (tmp_path / "b.png").write_bytes(buf.getvalue())  # a JPEG named .png
    assert "magic bytes" in (image_problem(tmp_path / "b.png", ".png") or "")
    pickled = io.BytesIO()
    torch.save({"x": 1}, pickled)
    (tmp_path / "logo.png").write_bytes(pickled.getvalue())  # a pickle named like an image
    assert "not a .png image" in (content_problem(tmp_path / "logo.png", "docs/logo.png") or "")
    # a decompression bomb: a tiny PNG whose header claims 60000 x 60000 pixels
    bomb = bytearray(_png((1, 1)))
    ihdr = bomb.index(b"IHDR")
    bomb[ihdr + 4 : ihdr + 12] = struct.pack(">II", 60000, 60000)
    (tmp_path / "bomb.png").write_bytes(bytes(bomb))
    assert image_problem(tmp_path / "bomb.png", ".png") is not None


def test_text_is_utf8_without_control_characters(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# model\n\tnotes\r\n", encoding="utf-8")
    assert content_problem(tmp_path / "README.md", "docs/README.md") is None
    (tmp_path / "LICENSE").write_bytes(b"Apache\x1b[2J")
    assert "control character" in (content_problem(tmp_path / "LICENSE", "LICENSE") or "")
    (tmp_path / "n.txt").write_bytes(b"caf\xe9")
    assert "not UTF-8" in (text_problem(tmp_path / "n.txt") or "")
    (tmp_path / "big.txt").write_text("x" * 100)
    assert "exceeds 10" in (text_problem(tmp_path / "big.txt", limit=10) or "")


@pytest.mark.parametrize("rel", ["docs/logo.svg", "docs/paper.pdf", "models/model.onnx", "docs/cases.csv", "x.py"])
def test_types_without_a_rule_are_refused(rel: str) -> None:
    assert file_type_reason(rel) is not None

"""All-or-nothing writes (``pipeline.utils.atomic``): the real name holds the old file or the whole new one, never a
part."""

from __future__ import annotations

import os
import stat

import pytest

from pipeline.utils.atomic import atomic_path, write_bytes, write_text


def test_write_text_and_bytes_replace_whole_files(tmp_path):
    target = tmp_path / "sub" / "summary.json"
    write_text(target, "old")
    write_text(target, "new\r\nline")
    assert target.read_bytes() == b"new\r\nline"  # newlines as given, folder created
    write_bytes(target, (c for c in [b"a", b"b", b"c"]))
    assert target.read_bytes() == b"abc"
    assert sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_bytes(b"previous")

    def chunks():
        yield b"half of the "
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_bytes(target, chunks())
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_overwrite_false_refuses_after_the_write_and_cleans_up(tmp_path):
    target = tmp_path / "bundle.zip"
    target.write_bytes(b"theirs")
    with (
        pytest.raises(FileExistsError, match="bundle.zip exists; refusing to overwrite"),
        atomic_path(target, overwrite=False) as tmp,
    ):
        tmp.write_bytes(b"ours")
    assert target.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["bundle.zip"]


def test_temp_name_carries_the_marker_and_the_file_gets_umask_permissions(tmp_path):
    target = tmp_path / "out.csv"
    with atomic_path(target, marker=".partial-") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.csv.partial-")
        tmp.write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask

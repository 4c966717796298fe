"""Whole-path inference benchmark (``benchmarks.infer_path``): what it counts and writes, never its timings."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from benchmarks.infer_path import infer_path_benchmark, write_volumes
from tests.conftest import BUNDLE_3D

# bundle ids over the 3D bundle's: 48x48x40 voxels at this spacing (no resampling), roi 32^3, overlap 0.25:
# ceil((48-32)/24)+1 = 2 windows along x and y, ceil((40-32)/24)+1 = 2 along z -> 8 windows per volume.
TINY = {"pixdim": [3.0, 3.0, 4.0], "roi_size": [32, 32, 32], "sw_batch_size": 2, "sw_overlap": 0.25}


def test_volumes_are_written_with_the_asked_grid(tmp_path):
    paths = write_volumes(tmp_path, 2, (20, 18, 10), (0.9, 0.8, 1.5))
    assert [p.name for p in paths] == ["vol_000.nii.gz", "vol_001.nii.gz"]
    img = nib.load(paths[1])
    assert img.shape == (20, 18, 10) and img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.header.get_zooms(), (0.9, 0.8, 1.5), rtol=1e-6)


def test_infer_path_counts_the_windows_it_times(tmp_path):
    r = infer_path_benchmark(
        BUNDLE_3D, volumes=2, shape=(48, 48, 40), spacing=(3.0, 3.0, 4.0), repeats=1, device="cpu",
        work=tmp_path, overrides=TINY,
    )  # fmt: skip
    assert r["windows_per_volume"] == 8
    assert r["window_batch_shapes"] == ["[2, 1, 32, 32, 32]"]
    s = r["s_per_volume"]
    assert all(math.isfinite(v) and v > 0 for v in s.values())
    assert r["ratio"] == pytest.approx(s["whole"] / s["bare"])
    assert set(r["stage_seconds_per_volume"][0]) == {"load", "infer", "write"}
    masks = sorted((tmp_path / "out1").glob("*_seg.nii.gz"))
    assert len(masks) == 2 and nib.load(masks[0]).shape == (48, 48, 40)


def test_infer_path_rejects_bad_arguments():
    with pytest.raises(ValueError, match="'volumes' and 'repeats' must be >= 1"):
        infer_path_benchmark(BUNDLE_3D, volumes=0)
    with pytest.raises(ValueError, match="'shape' and 'spacing' must have 3 entries"):
        infer_path_benchmark(BUNDLE_3D, shape=(64, 64))

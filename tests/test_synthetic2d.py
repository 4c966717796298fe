"""Synthetic 2D microscopy: deterministic, two sizes, a drifting grain fraction, pores as the minority class, a
6-band variant, MSD-style datasets readable by the datalist and the 2D chains, and ``synth --dims 2``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.checks.dataset import check_dataset
from pipeline.cli import main
from pipeline.data.datalist import load_datalist
from pipeline.data.synthetic2d import CLASS_NAMES_2D, LABEL_COLORS_2D, N_BANDS, SITES_2D, make_case_2d, make_site_2d
from pipeline.transforms.labels2d import MaskToClassesd


def _fractions(site: str, n: int = 4) -> np.ndarray:
    return np.array([np.bincount(make_case_2d(SITES_2D[site], s)[1].ravel(), minlength=3) for s in range(n)]) / np.prod(
        SITES_2D[site].shape
    )


def test_same_seed_same_case_and_different_seeds_differ():
    a, b, c = (make_case_2d(SITES_2D["B"], seed) for seed in (3, 3, 4))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def test_sites_differ_in_size_depth_and_grain_fraction():
    img_a, lab_a = make_case_2d(SITES_2D["A"], 0)
    img_b, lab_b = make_case_2d(SITES_2D["B"], 0)
    assert img_a.shape == lab_a.shape == (256, 256) and img_a.dtype == np.uint8
    assert img_b.shape == lab_b.shape == (128, 100) and img_b.dtype == np.uint16 and img_b.max() > 255
    fa, fb = _fractions("A"), _fractions("B")
    assert fb[:, 1].min() > fa[:, 1].max()  # the grain fraction has drifted
    for f in (fa, fb):
        assert (f[:, 2] > 0.005).all() and (f[:, 2] < 0.06).all()  # pores: present everywhere, the minority


def test_phases_are_visible_and_six_band_spectra_differ():
    img, lab = make_case_2d(SITES_2D["A"], 1)
    matrix, grain, pore = (float(img[lab == c].mean()) for c in range(3))
    assert pore < matrix < grain
    bands, lab6 = make_case_2d(SITES_2D["A"], 1, channels=N_BANDS)
    assert bands.shape == (N_BANDS, 256, 256) and bands.dtype == np.float32
    np.testing.assert_array_equal(lab6, lab)  # same scene
    spectra = np.array([bands[:, lab == c].mean(1) for c in range(3)])
    assert spectra[1, -1] - spectra[1, 0] > 0.2 and abs(spectra[0, -1] - spectra[0, 0]) < 0.1
    with pytest.raises(ValueError, match="'channels' must be 1 or 6"):
        make_case_2d(SITES_2D["A"], 0, channels=3)


def test_site_dataset_layout_and_rgb_labels(tmp_path):
    root = make_site_2d(tmp_path / "B", site="B", n_train=2, n_val=1, n_test=1, label_format="rgb")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"0": "matrix", "1": "grain", "2": "pore"} and meta["tensorImageSize"] == "2D"
    assert meta["label_colors"] == {str(k): list(v) for k, v in LABEL_COLORS_2D.items()}
    train = load_datalist(root, "training")
    assert [p["image"].rsplit("/", 1)[1] for p in train] == ["caseB_000.png", "caseB_001.png"]
    rgb = np.asarray(Image.open(train[0]["label"]))
    assert rgb.shape == (128, 100, 3)
    classes = MaskToClassesd("label", meta["label_colors"]).map(np.moveaxis(rgb, -1, 0))
    np.testing.assert_array_equal(np.asarray(classes)[0], make_case_2d(SITES_2D["B"], 500)[1])
    report = check_dataset(root, 2, 1, list(CLASS_NAMES_2D.values()), (64, 64), label_colors=meta["label_colors"])
    assert report.errors == [] and report.cases == 3


def test_synth_cli_dims_2_writes_png_and_six_band_sites(tmp_path, capsys):
    code = main(["synth", str(tmp_path), "--dims", "2", "--n-train", "1", "--n-val", "0", "--n-test", "1"])
    assert code == 0 and "2D microscopy" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site_A", "site_A_6ch", "site_B", "site_B_6ch"]
    assert (tmp_path / "site_A" / "imagesTr" / "caseA_000.png").is_file()
    assert np.load(tmp_path / "site_B_6ch" / "imagesTs" / "caseB_001.npy").shape == (N_BANDS, 128, 100)
    six = check_dataset(tmp_path / "site_B_6ch", 2, in_channels=N_BANDS, sections=("training", "test"))
    assert six.errors == [] and six.cases == 2

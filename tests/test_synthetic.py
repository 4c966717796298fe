from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.data.synthetic import CLASS_NAMES, SITES, make_case, make_dataset


def test_same_seed_same_case():
    a = make_case(SITES["A"], seed=3)
    b = make_case(SITES["A"], seed=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_structures_have_very_different_sizes():
    _, label, _ = make_case(SITES["A"], seed=1)
    counts = np.bincount(label.ravel(), minlength=4)
    organ, vessel, lesion = counts[1], counts[2], counts[3]
    assert organ > 5 * vessel > 0
    assert vessel > 3 * lesion > 0


def test_lesion_is_sometimes_absent():
    present = [bool((make_case(SITES["A"], seed=s)[1] == 3).any()) for s in range(8)]
    assert any(present) and not all(present)


def test_sites_share_anatomy_but_differ_in_spacing_orientation_and_contrast():
    img_a, lab_a, aff_a = make_case(SITES["A"], seed=2)
    img_b, lab_b, aff_b = make_case(SITES["B"], seed=2)
    assert np.diag(aff_a)[:3].tolist() == [1.5, 1.5, 2.0]
    assert np.diag(aff_b)[:3].tolist() == [-1.2, -1.2, 2.5]  # LPS
    # organ volume in mm^3 agrees within 10 % across sites (same anatomy, different grids)
    vol_a = (lab_a == 1).sum() * 1.5 * 1.5 * 2.0
    vol_b = (lab_b == 1).sum() * 1.2 * 1.2 * 2.5
    assert abs(vol_a - vol_b) / vol_a < 0.1
    # contrast: at site A the lesion is darker than the organ, at site B brighter
    assert img_a[lab_a == 3].mean() < img_a[lab_a == 1].mean()
    assert img_b[lab_b == 3].mean() > img_b[lab_b == 1].mean()


def test_make_dataset_writes_msd_layout(tmp_path):
    root = make_dataset(tmp_path, dims=2, site="B", n_train=2, n_val=1, n_test=1)
    meta = json.loads((root / "site_B" / "dataset.json").read_text())
    assert meta["labels"] == {str(k): v for k, v in CLASS_NAMES.items()}
    assert [len(meta[s]) for s in ("training", "validation", "test")] == [2, 1, 1]
    img = nib.load(root / "site_B" / meta["training"][0]["image"].lstrip("./"))
    assert img.shape == SITES["B"].shape[:2]
    assert np.allclose(np.diag(img.affine)[:2], [-1.2, -1.2])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="Unknown site 'C'"):
        make_dataset("/nonexistent", site="C")
    with pytest.raises(ValueError, match="'dims' must be 2 or 3"):
        make_case(SITES["A"], seed=0, dims=4)

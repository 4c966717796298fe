from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandCropByLabelClassesd, RandCropByPosNegLabeld

from pipeline.data import load_split
from pipeline.transforms import infer_transforms, intensity_transform, train_transforms, val_transforms


def test_train_chain_shapes(tiny_dataset_3d):
    item = load_split(tiny_dataset_3d, "training")[0]
    out = train_transforms(patch_size=(32, 32, 16), num_samples=3)(item)
    assert len(out) == 3
    for s in out:
        assert tuple(s["image"].shape) == (1, 32, 32, 16)
        assert tuple(s["label"].shape) == (1, 32, 32, 16)
        assert set(np.unique(s["label"].numpy())) <= {0, 1, 2, 3}
        assert not any(k.endswith("indices") for k in s)


def test_val_and_infer_chains_resample_to_pixdim(tiny_dataset_3d):
    item = load_split(tiny_dataset_3d, "validation")[0]
    v = val_transforms(pixdim=(3.0, 3.0, 4.0), crop_foreground=False)(item)
    # site A is 96x96x48 at 1.5x1.5x2.0 mm -> half the voxels per axis at 3x3x4 mm
    assert tuple(v["image"].shape) == (1, 48, 48, 24)
    assert float(v["image"].min()) >= 0.0 and float(v["image"].max()) <= 1.0
    i = infer_transforms(pixdim=(3.0, 3.0, 4.0))({"image": item["image"]})
    assert tuple(i["image"].shape) == (1, 48, 48, 24)


def test_image_smaller_than_patch_is_padded(tiny_dataset_3d):
    item = load_split(tiny_dataset_3d, "training")[0]
    out = train_transforms(patch_size=(32, 32, 64), pixdim=(3.0, 3.0, 4.0), num_samples=1, crop_foreground=False)(item)
    assert tuple(out[0]["image"].shape) == (1, 32, 32, 64)


def _crafted_label() -> torch.Tensor:
    """1x40x40x40 label with one interior block per class, far from the borders."""
    label = torch.zeros(1, 40, 40, 40)
    label[0, 10:20, 10:20, 10:20] = 1
    label[0, 22:26, 10:30, 20:24] = 2
    label[0, 28:30, 28:30, 28:30] = 3
    return label


def _sampler(chain, cls):
    return next(t for t in chain.transforms if isinstance(t, cls))


@pytest.mark.parametrize("ratios", [[1, 1, 1, 1], [0, 1, 0, 3]])
def test_class_sampling_follows_ratios(ratios):
    chain = train_transforms(patch_size=(8, 8, 8), num_classes=4, ratios=ratios, num_samples=1, augment=False)
    crop = _sampler(chain, RandCropByLabelClassesd)
    crop.set_random_state(seed=0)
    label = _crafted_label()
    draws = 800
    counts = np.zeros(4)
    for _ in range(draws):
        crop.cropper.randomize(label)
        for c in crop.cropper.centers:
            counts[int(label[(0, *[int(x) for x in c])])] += 1
    expected = np.asarray(ratios, dtype=float) / sum(ratios)
    observed = counts / counts.sum()
    # binomial std at p=0.25, n=800 is 0.015: allow 4 sigma
    np.testing.assert_allclose(observed, expected, atol=0.06)


def test_posneg_sampling_follows_pos_neg():
    chain = train_transforms(patch_size=(8, 8, 8), num_classes=4, sampling="posneg", pos=3, neg=1, num_samples=1)
    crop = _sampler(chain, RandCropByPosNegLabeld)
    crop.set_random_state(seed=0)
    label = _crafted_label()
    fg = 0
    draws = 800
    for _ in range(draws):
        crop.cropper.randomize(label)
        c = crop.cropper.centers[0]
        fg += int(label[(0, *[int(x) for x in c])] > 0)
    assert abs(fg / draws - 0.75) < 0.06


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": (32, 32)}, "'patch_size' must have 3 entries"),
        ({"sampling": "uniform"}, "Unknown 'sampling' 'uniform'; available"),
        ({"ratios": [1, 1]}, "'ratios' must have num_classes=4 entries"),
        ({"num_classes": 1}, "'num_classes' must be >= 2"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_transforms(**kwargs)


def test_unknown_intensity_mode():
    with pytest.raises(ValueError, match="Unknown intensity mode 'minmax'"):
        intensity_transform(mode="minmax")
    with pytest.raises(ValueError, match="needs 'a_min' and 'a_max'"):
        intensity_transform(mode="window")

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import RandRotate90d, RandSpatialCropSamplesd
from PIL import Image

from pipeline.data.datalist import load_split
from pipeline.transforms.chains import infer_transforms, square_plane, train_transforms, val_transforms
from pipeline.transforms.intensity import intensity_transform
from pipeline.transforms.sampling import ClassBalancedCropd, PosNegCropd, effective_ratios


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


def _crafted_label(dims: int = 3, lesion: bool = True) -> torch.Tensor:
    """1x40x40[x40] label with one interior block per class, far from the borders."""
    label = torch.zeros(1, *([40] * dims))
    s = (slice(10, 20), slice(10, 20), slice(10, 20))[:dims]
    label[(0, *s)] = 1
    label[(0, *(slice(22, 26), slice(10, 30), slice(20, 24))[:dims])] = 2
    if lesion:
        label[(0, *(slice(28, 30),) * dims)] = 3
    return label


def _sampler(chain, cls):
    return next(t for t in chain.transforms if isinstance(t, cls))


def _centre_classes(crop: ClassBalancedCropd, label: torch.Tensor, draws: int) -> np.ndarray:
    counts = np.zeros(4)
    indices = [np.flatnonzero(label[0].numpy().ravel() == c) for c in range(4)]
    for _ in range(draws):
        crop.randomize(label, indices)
        for c in crop.cropper.centers:
            counts[int(label[(0, *[int(x) for x in c])])] += 1
    return counts / counts.sum()


@pytest.mark.parametrize(
    ("dims", "lesion", "ratios", "expected"),
    [
        (3, True, [1, 1, 1, 1], [0.25, 0.25, 0.25, 0.25]),
        (3, True, [0, 1, 0, 3], [0, 0.25, 0, 0.75]),
        (2, True, [1, 1, 2, 4], [0.125, 0.125, 0.25, 0.5]),
        # lesion absent: its share goes to the classes present, in their ratios
        (3, False, [1, 1, 2, 4], [0.25, 0.25, 0.5, 0.0]),
    ],
)
def test_class_sampling_follows_ratios(dims, lesion, ratios, expected):
    patch = (8,) * dims
    chain = train_transforms(
        spatial_dims=dims, patch_size=patch, pixdim=None, ratios=ratios, num_samples=1, augment=False
    )
    crop = _sampler(chain, ClassBalancedCropd)
    crop.set_random_state(seed=0)
    # binomial std at p=0.5, n=800 is 0.018: 0.06 is > 3 sigma
    np.testing.assert_allclose(_centre_classes(crop, _crafted_label(dims, lesion), 800), expected, atol=0.06)


@pytest.mark.parametrize(
    ("ratios", "counts", "expected", "fallback"),
    [
        ([1, 1, 2, 4], [50, 10, 5, 1], [1, 1, 2, 4], None),
        ([1, 1, 2, 4], [50, 10, 0, 0], [1, 1, 0, 0], None),
        ([0, 0, 0, 1], [50, 10, 5, 0], [1, 0, 0, 0], "background"),
        ([0, 1, 1, 1], [50, 0, 0, 0], [1, 0, 0, 0], "background"),
        ([1, 0, 0, 0], [0, 10, 5, 0], [0, 1, 1, 0], "present"),
        ([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], "anywhere"),
    ],
)
def test_effective_ratios(ratios, counts, expected, fallback):
    assert effective_ratios(ratios, counts) == (expected, fallback)


def test_posneg_sampling_follows_pos_neg():
    chain = train_transforms(patch_size=(8, 8, 8), num_classes=4, sampling="posneg", pos=3, neg=1, num_samples=1)
    crop = _sampler(chain, PosNegCropd)
    crop.set_random_state(seed=0)
    label = _crafted_label()
    flat = label[0].numpy().ravel()
    fg_idx, bg_idx = np.flatnonzero(flat > 0), np.flatnonzero(flat == 0)
    fg = 0
    draws = 800
    for _ in range(draws):
        crop.randomize(label, fg_idx, bg_idx)
        c = crop.cropper.centers[0]
        fg += int(label[(0, *[int(x) for x in c])] > 0)
    assert abs(fg / draws - 0.75) < 0.06


def _write_case(folder, name: str, label: np.ndarray) -> dict[str, str]:
    rng = np.random.default_rng(0)
    paths = {}
    for key, arr in (("image", rng.normal(100, 10, label.shape).astype(np.float32)), ("label", label)):
        path = folder / f"{name}_{key}.nii.gz"
        nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
        paths[key] = str(path)
    return paths


@pytest.mark.parametrize(
    ("sampling", "ratios", "dims"),
    [("classes", [0, 1, 1, 1], 3), ("classes", [1, 1, 1, 1], 2), ("posneg", None, 3), ("uniform", None, 3)],
)
def test_all_background_case_gives_patches_and_names_the_file(tmp_path, caplog, sampling, ratios, dims):
    shape = (20, 24, 12)[:dims]
    item = _write_case(tmp_path, "empty_case", np.zeros(shape, dtype=np.uint8))
    chain = train_transforms(
        spatial_dims=dims, patch_size=(16,) * dims, pixdim=None, sampling=sampling, ratios=ratios, num_samples=3
    )
    chain.set_random_state(seed=0)
    with caplog.at_level(logging.WARNING, logger="pipeline.transforms.chains"):
        out = chain(item)
        chain(item)  # the warning is given once per file
    assert len(out) == 3 and all(tuple(s["image"].shape) == (1, *(16,) * dims) for s in out)
    assert all(int(s["label"].max()) == 0 for s in out)
    named = [r.getMessage() for r in caplog.records if "empty_case_label.nii.gz" in r.getMessage()]
    if sampling == "uniform":
        assert not named
    else:
        assert named and len(named) == len(set(named)), named


def test_missing_class_warning_names_class_and_file(tmp_path, caplog):
    label = np.zeros((24, 24, 12), dtype=np.uint8)
    label[4:12, 4:12, 2:8] = 1
    item = _write_case(tmp_path, "no_lesion", label)
    chain = train_transforms(
        patch_size=(16, 16, 8), pixdim=None, ratios=[1, 1, 1, 1], num_samples=4, class_names=list("BOVL")
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.transforms.chains"):
        out = chain(item)
    assert len(out) == 4
    assert any("no_lesion_label.nii.gz" in m and "'V' (2), 'L' (3)" in m for m in caplog.messages), caplog.messages


def test_uniform_sampling_is_the_baseline():
    chain = train_transforms(patch_size=(8, 8, 8), sampling="uniform", num_samples=2)
    assert isinstance(_sampler(chain, RandSpatialCropSamplesd), RandSpatialCropSamplesd)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_size": (32, 32)}, "'patch_size' must have 3 entries"),
        ({"sampling": "random"}, "Unknown 'sampling' 'random'; available"),
        ({"ratios": [1, 1]}, "'ratios' must have num_classes=4 entries"),
        ({"ratios": [0, 0, 0, 0]}, r"'ratios' must be >= 0 with at least one > 0, got \[0, 0, 0, 0\]"),
        ({"ratios": [1, -1, 1, 1]}, "'ratios' must be >= 0"),
        ({"pos": 0, "neg": 0}, "'pos' and 'neg' must be >= 0 and not both 0"),
        ({"class_names": ["a"]}, "'class_names' must have num_classes=4 entries"),
        ({"num_classes": 1}, "'num_classes' must be >= 2"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_transforms(**kwargs)


@pytest.mark.parametrize("ratios", [[1, -1, 1], [0, 0, 0], [1, 1]])
def test_2d_and_3d_refuse_bad_ratios_with_the_same_message(ratios):
    messages = []
    for dims in (2, 3):
        with pytest.raises(ValueError) as info:
            train_transforms(dims, (32,) * dims, 3, pixdim=None, ratios=ratios)
        messages.append(str(info.value))
    assert messages[0] == messages[1] and messages[0].startswith("'ratios' must")


# ------------------------------------------------------------------------------------------------ patch shapes
@pytest.mark.parametrize(
    ("patch", "plane"),
    [((64, 64, 32), (0, 1)), ((32, 64, 32), (0, 2)), ((32, 64, 64), (1, 2)), ((16, 32, 64), None), ((32, 64), None)],
)
def test_rotation_plane_is_the_first_square_one(patch, plane):
    assert square_plane(patch) == plane
    rotations = [
        t for t in train_transforms(len(patch), patch, 3, pixdim=None).transforms if isinstance(t, RandRotate90d)
    ]
    assert [t.spatial_axes for t in rotations] == ([] if plane is None else [plane])


def _write_png_case(folder, label: np.ndarray, colours: dict[str, list[int]] | None = None) -> dict[str, str]:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, label.shape).astype(np.uint8)).save(folder / "img2d.png")
    mask = np.array([colours[str(k)] for k in range(len(colours))], np.uint8)[label] if colours else label
    Image.fromarray(mask.astype(np.uint8)).save(folder / "mask2d.png")
    return {"image": str(folder / "img2d.png"), "label": str(folder / "mask2d.png")}


@pytest.mark.parametrize("patch", [(32, 64, 32), (32, 64)])
def test_augmentation_keeps_non_square_patch_shapes_and_batches_collate(tmp_path, patch):
    label = np.zeros((40, 70, 36)[: len(patch)], np.uint8)
    label[(slice(5, 20), slice(10, 40), slice(4, 20))[: len(patch)]] = 1
    label[(slice(25, 35), slice(45, 60), slice(20, 30))[: len(patch)]] = 2
    item = _write_case(tmp_path, "case", label) if len(patch) == 3 else _write_png_case(tmp_path, label)
    chain = train_transforms(len(patch), patch, 3, pixdim=None, num_samples=4, rotate_prob=1.0)
    patches = []
    for seed in range(6):
        chain.set_random_state(seed=seed)
        patches += chain(item)
    assert {tuple(p["image"].shape) for p in patches} == {(1, *patch)}
    assert {tuple(p["label"].shape) for p in patches} == {(1, *patch)}
    batch = list_data_collate(patches)
    assert tuple(batch["image"].shape) == (len(patches), 1, *patch)


# ------------------------------------------------------------------------------------------------ fixed streams
COLOURS = {"0": [0, 0, 0], "1": [255, 0, 0], "2": [0, 0, 255]}
# [shape, image sum, position-weighted image sum, label sum, position-weighted label sum] per patch, two calls each,
# computed with the separate 2D chain (pipeline/transforms/chains2d.py) and the 3D chain before they were merged: the
# bundles' (and demos') random streams must not change.
EXPECTED_STREAMS = {
    "2d": [
        [[1, 32, 32], 617.8739, 28950.435, 362, 15152],
        [[1, 32, 32], 518.8261, 24194.561, 186, 8678],
        [[1, 32, 32], 588.4188, 27141.448, 392, 16723],
        [[1, 32, 32], 525.5178, 24562.34, 268, 12745],
    ],
    "2d_posneg": [
        [[1, 32, 32], 631.1061, 29303.977, 376, 16138],
        [[1, 32, 32], 518.8261, 24194.561, 186, 8678],
        [[1, 32, 32], 596.146, 27609.31, 434, 20447],
        [[1, 32, 32], 514.8538, 24429.261, 362, 15953],
    ],
    "3d": [
        [[1, 16, 16, 8], 546.44, 26115.077, 380, 18053],
        [[1, 16, 16, 8], 448.0393, 21789.511, 368, 18537],
        [[1, 16, 16, 8], 579.3585, 27708.564, 380, 17790],
        [[1, 16, 16, 8], 507.7097, 24068.461, 368, 16668],
    ],
    "3d_uniform": [
        [[1, 16, 16, 8], 716.6588, 33705.219, 792, 36195],
        [[1, 16, 16, 8], 634.6191, 30704.261, 873, 42676],
        [[1, 16, 16, 8], 825.2993, 38606.147, 1008, 45795],
        [[1, 16, 16, 8], 670.2724, 32575.791, 800, 39606],
    ],
    "2d_val": [[[1, 40, 56], 1135.9407, 54114.715, 540, 23357]],
    "3d_val": [[[1, 16, 19, 8], 575.3106, 27690.51, 380, 18955]],
}


def _digest(patches) -> list:
    out = []
    for p in patches:
        img, lab = p["image"].double(), p["label"].long()
        w = torch.arange(img.numel(), dtype=torch.float64).reshape(img.shape) % 97
        wl = torch.arange(lab.numel()).reshape(lab.shape) % 97
        sums = [float(img.sum()), float((img * w).sum()), int(lab.sum()), int((lab * wl).sum())]
        out.append([list(img.shape), *sums])
    return out


def _stream_cases(folder) -> tuple[dict[str, str], dict[str, str]]:
    lab2 = np.zeros((40, 56), np.uint8)
    lab2[5:15, 8:30], lab2[22:30, 30:50] = 1, 2
    rng = np.random.default_rng(0)
    lab3 = np.zeros((24, 28, 12), np.uint8)
    lab3[4:12, 4:14, 2:8], lab3[14:20, 10:24, 4:10], lab3[18:21, 3:6, 1:4] = 1, 2, 3
    img3 = (rng.normal(100, 10, lab3.shape) + 40 * lab3).astype(np.float32)
    paths = {}
    for key, arr in (("image", img3), ("label", lab3)):
        nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 2.0, 1.0])), str(folder / f"{key}3d.nii.gz"))
        paths[key] = str(folder / f"{key}3d.nii.gz")
    return _write_png_case(folder, lab2, COLOURS), paths


def test_merged_chains_keep_the_random_streams(tmp_path):
    item2, item3 = _stream_cases(tmp_path)
    names = ["a", "b", "c"]
    chains = {
        "2d": (
            train_transforms(2, (32, 32), 3, pixdim=None, label_colors=COLOURS, num_samples=2, class_names=names),
            item2,
        ),
        "2d_posneg": (
            train_transforms(2, (32, 32), 3, label_colors=COLOURS, num_samples=2, sampling="posneg"),  # default pixdim
            item2,
        ),
        "3d": (train_transforms(3, (16, 16, 8), 4, pixdim=(3.0, 3.0, 3.0), num_samples=2), item3),
        "3d_uniform": (train_transforms(3, (16, 16, 8), 4, pixdim=None, num_samples=2, sampling="uniform"), item3),
    }
    got = {}
    for name, (chain, item) in chains.items():
        chain.set_random_state(seed=0)
        got[name] = _digest(chain(item)) + _digest(chain(item))
    got["2d_val"] = _digest([val_transforms(2, label_colors=COLOURS)(item2)])
    got["3d_val"] = _digest([val_transforms(3, pixdim=(3.0, 3.0, 3.0))(item3)])
    for name, rows in EXPECTED_STREAMS.items():
        assert [r[0] for r in got[name]] == [r[0] for r in rows], name
        assert [r[3:] for r in got[name]] == [r[3:] for r in rows], name
        floats = [v for r in got[name] for v in r[1:3]]
        assert floats == pytest.approx([v for r in rows for v in r[1:3]], rel=1e-6, abs=2e-3), name


def test_unknown_intensity_mode():
    with pytest.raises(ValueError, match="Unknown intensity mode 'minmax'"):
        intensity_transform(mode="minmax")
    with pytest.raises(ValueError, match="needs 'a_min' and 'a_max'"):
        intensity_transform(mode="window")

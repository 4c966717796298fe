"""2D images: every format and channel layout reads as ``(C, H, W)`` in the file's row/column order, RGB-coded masks map
to the right classes (unknown colours are errors naming file and colour), chains handle images of different sizes,
the 2D data check reports every problem, and batch inference writes PNG/TIFF masks at each input's size."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
from monai.transforms import Compose
from PIL import Image

from pipeline.checks.dataset import check_dataset
from pipeline.data.images2d import encode_mask_2d, read_image_2d
from pipeline.inference.engine import BatchInference
from pipeline.transforms.chains import load_transforms, train_transforms, val_transforms
from pipeline.transforms.labels2d import MaskToClassesd, parse_label_colors

H, W = 48, 40  # not square, so a transposed read is caught
GREY = (np.arange(H * W).reshape(H, W) % 251).astype(np.uint8)
STACK = np.random.default_rng(0).integers(0, 255, (6, H, W)).astype(np.uint8)


def _load(path: Path, in_channels: int = 1, **kw) -> np.ndarray:
    return np.asarray(Compose(load_transforms(["image"], 2, in_channels, **kw))({"image": str(path)})["image"])


def _writers():
    rgb = np.stack([GREY, 255 - GREY, GREY // 2], -1)
    return {
        "grey.png": (lambda p: Image.fromarray(GREY).save(p), GREY[None]),
        "grey16.png": (
            lambda p: Image.fromarray(GREY.astype(np.uint16) * 200).save(p),
            GREY[None].astype(np.uint16) * 200,
        ),
        "rgb.png": (lambda p: Image.fromarray(rgb).save(p), np.moveaxis(rgb, -1, 0)),
        "grey.tif": (lambda p: tifffile.imwrite(p, GREY), GREY[None]),
        "pages.tif": (lambda p: tifffile.imwrite(p, STACK, photometric="minisblack"), STACK),
        "interleaved.tif": (
            lambda p: tifffile.imwrite(p, np.moveaxis(STACK, 0, -1), photometric="minisblack", planarconfig="contig"),
            STACK,
        ),
        "chw.npy": (lambda p: np.save(p, STACK.astype(np.float32)), STACK),
        "hwc.npy": (lambda p: np.save(p, np.moveaxis(STACK, 0, -1).astype(np.float32)), STACK),
        "grey.nii.gz": (lambda p: nib.save(nib.Nifti1Image(GREY.astype(np.float32), np.eye(4)), p), GREY[None]),
        "bands.nii.gz": (
            lambda p: nib.save(nib.Nifti1Image(np.moveaxis(STACK, 0, -1)[:, :, None].astype(np.float32), np.eye(4)), p),
            STACK,
        ),
    }


@pytest.mark.parametrize("name", list(_writers()))
def test_every_format_reads_channel_first_in_row_column_order(tmp_path, name):
    write, expected = _writers()[name]
    write(tmp_path / name)
    got = _load(tmp_path / name, in_channels=expected.shape[0])
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_jpeg_reads_rgb(tmp_path):
    Image.fromarray(np.stack([GREY] * 3, -1)).save(tmp_path / "photo.jpg", quality=95)
    assert _load(tmp_path / "photo.jpg", 3).shape == (3, H, W)


def test_npy_channel_axis_ambiguous_is_an_error_with_the_fix(tmp_path):
    np.save(tmp_path / "cube.npy", np.zeros((20, 30, 20), np.float32))
    with pytest.raises(ValueError, match=r"cube\.npy: cannot tell the channel axis .*set channel_dim to 0"):
        read_image_2d(tmp_path / "cube.npy", channels=4)
    arr, meta = read_image_2d(tmp_path / "cube.npy", channel_dim=-1)
    assert list(meta["spatial_shape"]) == [20, 30] and meta["original_channel_dim"] == -1


# ------------------------------------------------------------------------------------------------ masks
COLOURS = {"0": [0, 0, 0], "1": [255, 0, 0], "2": [0, 0, 255]}
#  hand-made 4x4 RGB mask and its classes
RGB_4x4 = np.array(
    [
        [[0, 0, 0], [255, 0, 0], [255, 0, 0], [0, 0, 0]],
        [[0, 0, 0], [255, 0, 0], [0, 0, 255], [0, 0, 0]],
        [[0, 0, 255], [0, 0, 0], [0, 0, 0], [255, 0, 0]],
        [[0, 0, 255], [0, 0, 255], [0, 0, 0], [255, 0, 0]],
    ],
    dtype=np.uint8,
)
CLASSES_4x4 = np.array([[0, 1, 1, 0], [0, 1, 2, 0], [2, 0, 0, 1], [2, 2, 0, 1]])


def _label(path: Path, **kw) -> np.ndarray:
    chain = Compose(load_transforms(["image", "label"], 2, **kw))
    return np.asarray(chain({"image": str(path), "label": str(path)})["label"])


def test_rgb_coded_mask_maps_to_classes(tmp_path):
    Image.fromarray(RGB_4x4).save(tmp_path / "mask.png")
    got = _label(tmp_path / "mask.png", label_colors=COLOURS)
    assert got.shape == (1, 4, 4)
    np.testing.assert_array_equal(got[0], CLASSES_4x4)
    rgba = np.concatenate([RGB_4x4, np.full((4, 4, 1), 255, np.uint8)], -1)  # alpha is ignored
    Image.fromarray(rgba).save(tmp_path / "mask_rgba.png")
    np.testing.assert_array_equal(_label(tmp_path / "mask_rgba.png", label_colors=COLOURS)[0], CLASSES_4x4)


def test_unknown_colour_is_an_error_naming_file_and_colour(tmp_path):
    bad = RGB_4x4.copy()
    bad[0, 3] = [255, 255, 0]
    Image.fromarray(bad).save(tmp_path / "mask.png")
    path = str(tmp_path / "mask.png")
    index_only = Compose(load_transforms(["image", "label"], 2))  # no label_colors: an RGB mask is refused
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps the transform's error
        index_only({"image": path, "label": path})
    assert re.search(r"mask\.png: label has 3 channels .*set label_colors", str(info.value.__cause__))
    loaded = Compose(load_transforms(["image", "label"], 2, label_colors={"0": [0, 0, 0], "1": [255, 0, 0]}))
    with pytest.raises(RuntimeError) as info:
        loaded({"image": path, "label": path})
    message = str(info.value.__cause__)
    assert f"{path}: 5 pixel(s) have colours not in 'label_colors'" in message
    assert "[0, 0, 255] (4 px, first at row 1, col 2)" in message and "[255, 255, 0] (1 px" in message


def test_colour_tolerance_accepts_near_colours(tmp_path):
    noisy = np.clip(RGB_4x4.astype(int) + np.random.default_rng(1).integers(-6, 7, RGB_4x4.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(tmp_path / "mask.png")
    with pytest.raises(ValueError, match="set color_tolerance"):
        MaskToClassesd("label", COLOURS).map(np.moveaxis(noisy, -1, 0))
    got = _label(tmp_path / "mask.png", label_colors=COLOURS, color_tolerance=8)
    np.testing.assert_array_equal(got[0], CLASSES_4x4)


def test_palette_index_mask_keeps_indices(tmp_path):
    im = Image.fromarray(CLASSES_4x4.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255])
    im.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(_label(tmp_path / "voc.png")[0], CLASSES_4x4)


@pytest.mark.parametrize(
    "colours, match",
    [
        ({"0": [0, 0, 0], "1": [0, 0, 0]}, r"colour \[0, 0, 0\] is given to classes 0 and 1"),
        ({"0": [0, 0, 0], "1": [255, 0]}, "must all have the same length"),
        ({"0": [0, 0, 0], "x": [255, 0, 0]}, r"entry 'x'.*expected a class index"),
        ({"0": [0, 0, 0], "5": [255, 0, 0]}, r"class 5 is not below num_classes=3"),
        ({}, "'label_colors' is empty"),
    ],
)
def test_label_colors_validation(colours, match):
    with pytest.raises(ValueError, match=match):
        parse_label_colors(colours, num_classes=3) if colours else parse_label_colors(colours)


# ------------------------------------------------------------------------------------------------ chains
def test_chains_take_images_of_any_size(tmp_path):
    rng = np.random.default_rng(0)
    for name, (h, w) in {"small": (H, W), "large": (96, 80)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w)).astype(np.uint8)).save(tmp_path / f"{name}.png")
        label = np.zeros((h, w), np.uint8)
        label[5:15, 5:12], label[20:24, 20:26] = 1, 2
        Image.fromarray(label).save(tmp_path / f"{name}_seg.png")
        item = {"image": str(tmp_path / f"{name}.png"), "label": str(tmp_path / f"{name}_seg.png")}
        patches = train_transforms(2, (64, 64), 3, num_samples=3)(item)
        assert [tuple(p["image"].shape) for p in patches] == [(1, 64, 64)] * 3  # the small one is padded
        assert all(set(np.unique(p["label"])) <= {0, 1, 2} for p in patches)
        whole = val_transforms(2)(item)
        assert tuple(whole["image"].shape) == (1, h, w) and tuple(whole["label"].shape) == (1, h, w)
        assert float(whole["image"].min()) >= 0.0 and float(whole["image"].max()) <= 1.0
    with pytest.raises(ValueError, match=r"'patch_size' must have 2 entries"):
        train_transforms(2, (64, 64, 32))
    with pytest.raises(ValueError, match=r"'label_colors' maps RGB\(A\)-coded 2D masks, but spatial_dims=3"):
        val_transforms(3, label_colors=COLOURS)


def test_encode_mask_round_trip():
    labels = CLASSES_4x4.astype(np.uint8)
    for suffix in (".png", ".tif"):
        import io

        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_mask_2d(labels, suffix)))), labels)
    with pytest.raises(ValueError, match="0..255"):
        encode_mask_2d(np.full((2, 2), 300), ".png")


# ------------------------------------------------------------------------------------------------ data check
def _case(root: Path, name: str, image: np.ndarray, label: np.ndarray) -> dict[str, str]:
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    ext = ".npy" if image.ndim == 3 else ".png"
    (np.save if ext == ".npy" else lambda p, a: Image.fromarray(a).save(p))(root / "imagesTr" / f"{name}{ext}", image)
    Image.fromarray(label).save(root / "labelsTr" / f"{name}.png")
    return {"image": f"./imagesTr/{name}{ext}", "label": f"./labelsTr/{name}.png"}


def test_data_check_reports_every_problem(tmp_path):
    ok = np.zeros((H, W), np.uint8)
    ok[:10, :10] = 1
    bad_value = ok.copy()
    bad_value[0, 0] = 7
    cases = [
        _case(tmp_path, "good", GREY, ok),
        _case(tmp_path, "six_bands", STACK.astype(np.float32), ok),
        _case(tmp_path, "other_size", GREY, ok[:32]),
        _case(tmp_path, "bad_value", GREY, bad_value),
        _case(tmp_path, "rgb_mask", GREY, np.stack([ok * 255] * 3, -1)),
    ]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": cases}))
    report = check_dataset(tmp_path, 2, 1, ["matrix", "grain", "pore"], patch_size=(64, 64))
    kinds = {(Path(p.where).stem, p.kind) for p in report.errors}
    assert kinds == {
        ("six_bands", "wrong_channels"),
        ("other_size", "shape_mismatch"),
        ("bad_value", "label_values"),
        ("rgb_mask", "label_values"),
    }
    assert [p.kind for p in report.warnings] == ["small_image"]  # 48x40 < 64x64: padded, works
    msg = next(p.message for p in report.errors if Path(p.where).stem == "bad_value")
    assert "label values [7] are not declared classes [0, 1, 2]" in msg and "set label_colors" in msg
    colours = {"0": [0, 0, 0], "1": [255, 255, 255]}
    coloured = check_dataset(tmp_path, 2, 1, ["matrix", "grain", "pore"], label_colors=colours)
    rgb_problems = [p for p in coloured.errors if Path(p.where).stem == "rgb_mask"]
    assert rgb_problems == []  # with the colour map the RGB mask is fine ...
    assert any("label has 1 channel(s) but 'label_colors' colours have 3" in p.message for p in coloured.errors)


# ------------------------------------------------------------------------------------------------ inference
def _threshold_net(in_channels: int) -> torch.nn.Module:
    net = torch.nn.Conv2d(in_channels, 2, 1)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([-10.0, 10.0]).view(2, 1, 1, 1).repeat(1, in_channels, 1, 1) / in_channels)
        net.bias.copy_(torch.tensor([5.0, -5.0]))
    return net


def _square(h: int, w: int, channels: int = 1) -> np.ndarray:
    img = np.zeros((channels, h, w), np.uint8)
    img[:, 3:13, 5:25] = 200  # wider than high, off-centre: a transposed or shifted mask misses it
    return img


def test_batch_inference_writes_masks_at_each_inputs_size(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_square(H, W)[0]).save(src / "small.png")
    Image.fromarray(_square(70, 90)[0]).save(src / "sub" / "large.png")
    tifffile.imwrite(src / "scan.tif", _square(50, 64)[0])
    Image.fromarray(np.stack([_square(40, 40)[0]] * 3, -1)).save(src / "photo.jpg", quality=100)
    engine = BatchInference(
        _threshold_net(1), spatial_dims=2, class_names=["bg", "sq"], roi_size=(32, 32), progress=False
    )
    rgb = BatchInference(
        _threshold_net(3), spatial_dims=2, in_channels=3, roi_size=(32, 32), probabilities=True, progress=False
    )
    report = engine.run(src, tmp_path / "out")
    assert {Path(f["input"]).name for f in report.failed} == {"photo.jpg"}  # 3 channels for a 1-channel model
    assert "the model takes in_channels=1. Use a model trained on that many channels" in report.failed[0]["reason"]
    for rel, (h, w) in {"small_seg.png": (H, W), "sub/large_seg.png": (70, 90), "scan_seg.tif": (50, 64)}.items():
        mask = np.asarray(Image.open(tmp_path / "out" / rel))
        assert mask.shape == (h, w) and mask.dtype == np.uint8, rel
        np.testing.assert_array_equal(mask, (_square(h, w)[0] > 0).astype(np.uint8))
    (tmp_path / "rgb").mkdir()
    (src / "photo.jpg").rename(tmp_path / "rgb" / "photo.jpg")
    rgb.run(tmp_path / "rgb", tmp_path / "out_rgb")
    assert np.asarray(Image.open(tmp_path / "out_rgb" / "photo_seg.png")).shape == (40, 40)
    assert np.load(tmp_path / "out_rgb" / "photo_prob.npy").shape == (2, 40, 40)


def test_batch_inference_six_channel_npy(tmp_path):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "tile.npy", _square(H, W, 6).astype(np.float32))
    engine = BatchInference(_threshold_net(6), spatial_dims=2, in_channels=6, roi_size=(32, 32), progress=False)
    engine.run(tmp_path / "in", tmp_path / "out").raise_if_failed()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "tile_seg.png")), _square(H, W)[0] > 0)
    nifti = BatchInference(
        _threshold_net(6), spatial_dims=2, in_channels=6, roi_size=(32, 32), progress=False, mask_format="nifti"
    )
    nifti.run(tmp_path / "in", tmp_path / "out_nii").raise_if_failed()
    assert nib.load(tmp_path / "out_nii" / "tile_seg.nii.gz").shape == (H, W)

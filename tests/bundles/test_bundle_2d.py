"""The 2D bundle: every config parses, the network instantiates (also from ImageNet-style torchvision weights with 6
input channels), metadata passes the schema offline, ``verify_net_in_out`` passes, and ``python -m monai.bundle run
training / evaluating / inferring`` work end to end on images of two sizes and on 6-channel stacks."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out
from monai.networks.nets import ResNet
from PIL import Image

from pipeline.bundle.run import bundle_command, configure_bundle, run_bundle, stage_bundle
from pipeline.cli import main
from pipeline.data.synthetic2d import SITES_2D, make_case_2d
from tests.conftest import REPO, SCHEMA

BUNDLE_2D = REPO / "bundles" / "transfer_2d_segmentation"
CONFIGS = BUNDLE_2D / "configs"
#  set in both train.json and inference.json of a bundle copy (what a site edits), so every run agrees
TINY_NET = {"backbone": "resnet10", "decoder_channels": [16, 8, 8, 8, 8], "roi_size": [64, 64], "sw_batch_size": 1}
ONE_EPOCH = {"max_epochs": 1, "val_interval": 1, "num_samples": 2, "batch_size": 2}


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE_2D), **overrides})
    return parser


@pytest.mark.parametrize(
    "files", [("train.json",), ("train.json", "evaluate.json"), ("train.json", "finetune.json"), ("inference.json",)]
)
def test_config_parses_and_network_instantiates(files):
    overrides = {"pretrained": None} if "finetune.json" in files else {}
    parser = _parser(*files, **overrides)
    net = parser.get_parsed_content("network_def")
    assert net.segmentation_head[0].out_channels == 3 and net.encoder.conv1.in_channels == 1
    if "inference.json" not in files:
        assert parser.get_parsed_content("train#preprocessing") is not None
        assert parser.get_parsed_content("validate#preprocessing") is not None
        assert parser.get("data_check")["_target_"] == "pipeline.checks.dataset.check_training_data"
    else:
        assert parser.get_parsed_content("preprocessing") is not None
        assert list(parser.get_parsed_content("inferer").roi_size) == [128, 128]


def test_inference_config_matches_training_config():
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    for key in ("class_names", "spatial_dims", "in_channels", "backbone", "decoder_channels", "pixdim", "intensity"):
        assert infer[key] == train[key], key
    assert infer["roi_size"] == train["roi_size"] and infer["channel_dim"] == train["channel_dim"]
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channel_def[str(i)] for i in range(len(channel_def))] == train["class_names"]
    finetune = json.loads((CONFIGS / "finetune.json").read_text())
    three_d = json.loads((REPO / "bundles" / "transfer_3d_segmentation" / "configs" / "finetune.json").read_text())
    assert finetune == three_d  # the same overlay: stages are named alike for 2D and 3D ResNet encoders


def test_metadata_passes_schema_offline():
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA), create_dir=False)


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=8,
        bundle_root=str(BUNDLE_2D),
    )


def test_imagenet_torchvision_weights_load_into_six_channels(tmp_path):
    # torchvision resnet18 naming (== MONAI ResNet naming): conv1 (64, 3, 7, 7), bn1, layerN.i.*, downsample, fc
    src = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    parser = _parser("train.json", in_channels=6, pretrained=str(tmp_path / "resnet18-f37072fd.pth"))
    net = parser.get_parsed_content("network")
    report = net.load_report
    assert report.source_format == "resnet" and set(report.skipped_by_pattern) == {"fc.weight", "fc.bias"}
    assert report.adapted == [
        {"key": "encoder.conv1.weight", "how": "input channels 3 -> 6: repeated cyclically, divided by copies"}
    ]
    expected = src.conv1.weight[:, [0, 1, 2, 0, 1, 2]] / 2
    assert torch.allclose(net.encoder.conv1.weight, expected)
    assert torch.equal(net.encoder.layer3[1].conv2.weight, src.layer3[1].conv2.weight)
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.missing)
    assert net.eval()(torch.rand(1, 6, 64, 96)).shape == (1, 3, 64, 96)


# ------------------------------------------------------------------------------------------------ end to end
def _write_case(root: Path, folder: str, name: str, shape: tuple[int, int], seed: int, channels: int) -> dict:
    image, label = make_case_2d(replace(SITES_2D["A"], shape=shape), seed, channels)
    (root / f"images{folder}").mkdir(parents=True, exist_ok=True)
    (root / f"labels{folder}").mkdir(parents=True, exist_ok=True)
    ext = ".png" if channels == 1 else ".npy"
    if channels == 1:
        Image.fromarray(image).save(root / f"images{folder}" / f"{name}{ext}")
    else:
        np.save(root / f"images{folder}" / f"{name}{ext}", image)
    Image.fromarray(label).save(root / f"labels{folder}" / f"{name}.png")
    return {"image": f"./images{folder}/{name}{ext}", "label": f"./labels{folder}/{name}.png"}


def _dataset(root: Path, channels: int = 1) -> Path:
    """Training images of three sizes (one smaller than the 64x64 patch), test images of two sizes."""
    sizes = {"training": [(64, 64), (48, 40), (80, 72)], "validation": [(64, 48)], "test": [(64, 64), (48, 40)]}
    meta: dict = {"labels": {"0": "matrix", "1": "grain", "2": "pore"}}
    seed = 0
    for section, shapes in sizes.items():
        meta[section] = []
        for shape in shapes:
            folder = "Ts" if section == "test" else "Tr"
            meta[section].append(_write_case(root, folder, f"case_{seed:03d}", shape, seed, channels))
            seed += 1
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def _bundle(tmp_path: Path, **values) -> Path:
    root = stage_bundle(BUNDLE_2D, tmp_path / "bundle")
    configure_bundle(root, {**TINY_NET, **values})
    return root


@pytest.fixture(autouse=True)
def _two_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MALLOC_MMAP_MAX_", os.environ.get("MALLOC_MMAP_MAX_", "0"))


@pytest.mark.slow
def test_mixed_sizes_train_evaluate_infer_png_masks_at_input_size(tmp_path):
    data = _dataset(tmp_path / "data")
    root = _bundle(tmp_path)
    logs = tmp_path / "logs"
    run_bundle(bundle_command(root, "training", ["train.json"], {"dataset_dir": str(data), **ONE_EPOCH}), logs / "t")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert state["encoder.conv1.weight"].shape[1] == 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (root / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/dice/grain", "val/dice/pore", "val/iou/grain", "val_mean_dice"} <= tags

    eval_dir = tmp_path / "eval"
    values = {"dataset_dir": str(data), "eval_dir": str(eval_dir)}
    before = {p.name: p.stat().st_mtime_ns for p in (root / "models").iterdir()}
    # the model-zoo command: no run id, so MONAI runs "run", which evaluate.json overrides (it must not train)
    run_bundle(bundle_command(root, None, ["train.json", "evaluate.json"], values), logs / "e")
    assert {p.name: p.stat().st_mtime_ns for p in (root / "models").iterdir()} == before
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["classes"]) == {"grain", "pore"} and summary["n_cases"] == 2
    assert (eval_dir / "metrics_per_case.csv").read_text().count("\n") == 1 + 2 * 2  # header + 2 cases x 2 classes

    out = tmp_path / "pred"
    values = {"dataset_dir": str(data / "imagesTs"), "output_dir": str(out)}
    run_bundle(bundle_command(root, "inferring", ["inference.json"], values), logs / "i")
    for name, shape in {"case_004": (64, 64), "case_005": (48, 40)}.items():
        mask = np.asarray(Image.open(out / f"{name}_seg.png"))
        assert mask.shape == shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1, 2}


@pytest.mark.slow
def test_six_channel_stacks_train_and_infer(tmp_path, capsys):
    data = _dataset(tmp_path / "data", channels=6)
    root = _bundle(tmp_path, in_channels=6)
    values = {"dataset_dir": str(data), **ONE_EPOCH}
    run_bundle(bundle_command(root, "training", ["train.json"], values), tmp_path / "train.log")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert state["encoder.conv1.weight"].shape[1] == 6
    out = tmp_path / "pred"
    assert main(["infer", "--bundle", str(root), str(data / "imagesTs"), str(out), "--no-progress"]) == 0
    assert "2 processed" in capsys.readouterr().out
    assert np.asarray(Image.open(out / "case_005_seg.png")).shape == (48, 40)

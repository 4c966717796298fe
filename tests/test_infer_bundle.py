"""``from_bundle``, the one way to build batch inference: ``python -m pipeline infer`` and
``python -m monai.bundle run inferring`` build the same engine from the same ids and write the same bytes, for a
non-default 2D bundle too; CLI flags are bundle ids; errors name the file and id."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.bundle.config import BUNDLE_2D, BUNDLE_3D, BundleError
from pipeline.bundle.run import bundle_command, run_bundle
from pipeline.cli import build_parser, main
from pipeline.commands.infer import bundle_overrides
from pipeline.inference.bundle import ENGINE_ID, RUN_ID, from_bundle
from pipeline.networks.unet import PretrainedUNet

# the 2D bundle with non-default settings: two channel-first channels, TIFF masks, z-score, small windows
NON_DEFAULT_2D = {
    "in_channels": 2,
    "channel_dim": 0,
    "mask_format": "tiff",
    "intensity": {"mode": "zscore"},
    "backbone": "resnet10",
    "decoder_channels": [16, 8, 8, 8, 8],
    "roi_size": [32, 32],
    "sw_batch_size": 1,
    "probabilities": True,
}


def _bundle_2d(root: Path, **changes) -> Path:
    """A copy of the 2D bundle with ``changes`` to ``inference.json`` and a tiny seeded ``models/model.pt``."""
    shutil.copytree(BUNDLE_2D, root, ignore=shutil.ignore_patterns("models", "runs", "eval", "__pycache__"))
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config, indent=4))
    torch.manual_seed(0)
    net = PretrainedUNet(2, config["in_channels"], len(config["class_names"]), config["backbone"],
                         decoder_channels=config["decoder_channels"])  # fmt: skip
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def _images(folder: Path) -> Path:
    """Two channel-first ``(2, H, W)`` float32 stacks: a bright block in channel 0, a gradient in channel 1."""
    rng = np.random.default_rng(0)
    for rel, (h, w) in [("a.npy", (40, 48)), ("sub/b.npy", (36, 30))]:
        img = rng.normal(0, 1, (2, h, w)).astype(np.float32)
        img[0, 5:20, 8:30] += 6.0
        img[1] += np.linspace(0, 3, w, dtype=np.float32)
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / rel, img)
    return folder


def bundle_files(folder: Path) -> dict[str, bytes]:
    """Every output's bytes by relative path; ``summary.json`` holds times and paths, so only its counts count."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files["summary.json"] = json.dumps(json.loads(files["summary.json"])["counts"]).encode()
    return files


@pytest.fixture(scope="module")
def bundle_2d(tmp_path_factory) -> Path:
    return _bundle_2d(tmp_path_factory.mktemp("b2d") / "bundle", **NON_DEFAULT_2D)


def test_cli_and_bundle_inferring_write_the_same_bytes_for_a_non_default_2d_bundle(bundle_2d, tmp_path, monkeypatch):
    images = _images(tmp_path / "images")
    cli, bundle = tmp_path / "cli", tmp_path / "bundle"
    assert main(["infer", "--bundle", str(bundle_2d), str(images), str(cli), "--no-progress", "--device", "cpu"]) == 0
    # as a user types it; the same torch threads as this process, so the float sums run in the same order
    overrides = {"dataset_dir": str(images), "output_dir": str(bundle), "device": "cpu"}
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    run_bundle(bundle_command(bundle_2d, RUN_ID, ["inference.json"], overrides), tmp_path / "inferring.log")

    ours, theirs = bundle_files(cli), bundle_files(bundle)
    # the bundle's mask_format "tiff" and probabilities: TIFF masks and (C, H, W) .npy probabilities
    assert sorted(ours) == [
        "a_prob.npy", "a_seg.tif", "failures.csv", "sub/b_prob.npy", "sub/b_seg.tif", "summary.json",
    ]  # fmt: skip
    assert ours == theirs
    with Image.open(cli / "a_seg.tif") as im:
        mask = np.asarray(im)
    prob = np.load(cli / "a_prob.npy")
    assert mask.shape == (40, 48) and mask.dtype == np.uint8 and prob.shape == (3, 40, 48)
    np.testing.assert_array_equal(mask, prob.argmax(0))
    assert json.loads(ours["summary.json"]) == {"processed": 2, "skipped": 0, "failed": 0, "ignored": 0}


def test_from_bundle_builds_what_the_config_says(bundle_2d):
    engine = from_bundle(bundle_2d, overrides={"device": "cpu", "sw_batch_size": 3, "sw_mode": "constant"})
    assert engine.mask_format == "tiff" and engine.probabilities is True and engine.in_channels == 2
    assert list(engine.inferer.roi_size) == [32, 32] and engine.inferer.sw_batch_size == 3
    assert engine.inferer.mode == "constant" and engine.device == torch.device("cpu")
    assert engine.checkpoint == str(bundle_2d / "models" / "model.pt")
    reader = engine._load.transforms[0]._loader.readers[-1]  # the bundle's preprocessing, channel_dim 0
    assert reader.channel_dim == 0 and reader.channels == 2
    weights = torch.load(bundle_2d / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(engine.network.state_dict()[k], v) for k, v in weights.items())


@pytest.mark.parametrize("bundle", [BUNDLE_3D, BUNDLE_2D], ids=["3d", "2d"])
def test_shipped_bundles_infer_with_the_engine_id(bundle):
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config[RUN_ID][-1] == f"$@{ENGINE_ID}.run(@dataset_dir, @output_dir).raise_if_failed()"
    assert config[ENGINE_ID]["_target_"] == "pipeline.inference.engine.BatchInference"
    unused = {"datalist", "dataset", "dataloader", "postprocessing", "handlers", "evaluator"}
    assert not unused & set(config)


def test_cli_flags_set_bundle_ids():
    args = build_parser().parse_args(
        ["infer", "in", "out", "--bundle", "b", "--overlap", "0", "--mode", "constant", "--sw-batch-size", "4",
         "--device", "cpu", "--probabilities", "--overwrite", "--dicom-seg", "--no-progress"]
    )  # fmt: skip
    assert bundle_overrides(args) == {
        "sw_overlap": 0.0, "sw_mode": "constant", "sw_batch_size": 4, "device": "cpu", "probabilities": True,
        "overwrite": True, "dicom_seg": "binary", "progress": False,
    }  # fmt: skip
    # flags left out keep the bundle's values
    assert bundle_overrides(build_parser().parse_args(["infer", "in", "out", "--bundle", "b"])) == {}


def test_errors_name_the_file_and_id(bundle_2d, tmp_path, capsys):
    config = bundle_2d / "configs" / "inference.json"
    with pytest.raises(BundleError, match=rf"{config}: no id 'overlap' to override .* 'sw_overlap'"):
        from_bundle(bundle_2d, overrides={"overlap": 0.5})
    with pytest.raises(BundleError, match=r"cannot build 'batch_inference': ValueError: 'mask_format' must be one of"):
        from_bundle(bundle_2d, overrides={"mask_format": "jpeg", "device": "cpu"})
    with pytest.raises(FileNotFoundError, match=rf"No model weights at {tmp_path}/none.pt .*--checkpoint PATH"):
        from_bundle(bundle_2d, tmp_path / "none.pt")
    # the 2D bundle reads no DICOM series, so it has no dicom_seg id: the flag is refused, exit code 1
    assert main(["infer", "--bundle", str(bundle_2d), str(tmp_path), str(tmp_path / "o"), "--dicom-seg"]) == 1
    assert "no id 'dicom_seg' to override" in capsys.readouterr().err

    broken = tmp_path / "broken"
    shutil.copytree(bundle_2d, broken)
    cfg = json.loads((broken / "configs" / "inference.json").read_text())
    cfg.pop(ENGINE_ID)
    (broken / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match=r"inference.json: no 'batch_inference'; expected a .*BatchInference"):
        from_bundle(broken)


def test_class_names_that_differ_from_channel_def_are_warned_about(tmp_path, caplog):
    bundle = _bundle_2d(tmp_path / "b", **{**NON_DEFAULT_2D, "class_names": ["matrix", "grain", "crack"]})
    with caplog.at_level(logging.WARNING, logger="pipeline.inference.bundle"):
        engine = from_bundle(bundle, overrides={"device": "cpu"})
    assert engine.labels == {0: "matrix", 1: "grain", 2: "crack"}
    (record,) = caplog.records
    assert "class_names {0: 'matrix', 1: 'grain', 2: 'crack'} differ from metadata.json" in record.getMessage()
    assert "'2': 'pore'" in record.getMessage()

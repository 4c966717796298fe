"""The 3D bundle: every config parses, the network instantiates, metadata passes the schema offline, and
``python -m monai.bundle run training / evaluating / inferring`` work end to end on tiny synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from tests.conftest import BUNDLE_3D, SCHEMA

CONFIGS = BUNDLE_3D / "configs"


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE_3D), **overrides})
    return parser


@pytest.mark.parametrize("files", [("train.json",), ("train.json", "evaluate.json"), ("inference.json",)])
def test_config_parses_and_network_instantiates(files):
    parser = _parser(*files)
    net = parser.get_parsed_content("network_def")
    assert net.segmentation_head[0].out_channels == 4


def test_inference_config_matches_training_config():
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    for key in ("class_names", "spatial_dims", "in_channels", "backbone", "decoder_channels", "pixdim", "intensity"):
        assert infer[key] == train[key], key
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channel_def[str(i)] for i in range(len(channel_def))] == train["class_names"]


def test_metadata_passes_schema_offline(tmp_path):
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA), create_dir=False)


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        n=2,
        any=8,
        bundle_root=str(BUNDLE_3D),
    )


def _bundle_cmd(run_id: str | None, bundle_root: Path, configs: list[str], **overrides) -> list[str]:
    config_file = [str(CONFIGS / c) for c in configs]
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        *([run_id] if run_id else []),  # None: MONAI's default run id "run", as model-zoo commands
        "--config_file",
        json.dumps(config_file) if len(config_file) > 1 else config_file[0],
        "--meta_file",
        str(CONFIGS / "metadata.json"),
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--bundle_root",
        str(bundle_root),
    ]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


TINY = {"patch_size": "[32,32,32]", "pixdim": "[3.0,3.0,4.0]", "num_samples": 2, "batch_size": 1, "sw_batch_size": 1}


@pytest.mark.slow
def test_train_evaluate_infer_end_to_end(tiny_dataset_3d, tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE_3D, root, ignore=shutil.ignore_patterns("models"))
    _run(
        _bundle_cmd("training", root, ["train.json"], dataset_dir=tiny_dataset_3d, max_epochs=1, val_interval=1, **TINY)
    )
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert any(k.startswith("segmentation_head") for k in state)
    assert list((root / "runs").glob("events.out.tfevents.*"))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in (root / "runs").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"val/dice/organ", "val/dice/lesion", "val/iou/vessel", "val_mean_dice"} <= tags

    eval_dir = tmp_path / "eval"
    before = {p.name: p.stat().st_mtime_ns for p in (root / "models").iterdir()}
    # the model-zoo command: no run id, so MONAI runs "run", which evaluate.json overrides (it must not train)
    _run(
        _bundle_cmd(None, root, ["train.json", "evaluate.json"], dataset_dir=tiny_dataset_3d, eval_dir=eval_dir, **TINY)
    )
    assert {p.name: p.stat().st_mtime_ns for p in (root / "models").iterdir()} == before
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert set(summary["classes"]) == {"organ", "vessel", "lesion"}
    assert (eval_dir / "metrics_per_case.csv").read_text().count("\n") == 1 + 3  # header + 1 case x 3 classes

    out = tmp_path / "pred"
    images = tiny_dataset_3d / "imagesTs"
    _run(_bundle_cmd("inferring", root, ["inference.json"], dataset_dir=images, output_dir=out, pixdim="[3.0,3.0,4.0]"))
    src = nib.load(next(images.glob("*.nii.gz")))
    masks = list(out.rglob("*.nii.gz"))
    assert len(masks) == 1
    mask = nib.load(masks[0])
    assert mask.shape == src.shape
    np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
    assert mask.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2, 3}

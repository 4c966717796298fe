"""A bundle *folder* is used only with proof: a received (imported) folder is verified like its zip, a local folder
runs only the templates' code with allowed parameters and never supplies weights unless told
(``trust_unverified``, logged); the templates ship with the package."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pipeline.bundle.config import BUNDLE_2D, BUNDLE_3D
from pipeline.cli import main
from pipeline.inference.bundle import from_bundle
from pipeline.networks.unet import PretrainedUNet
from pipeline.networks.weights import load_pretrained, pretrained_network
from pipeline.share.install import import_bundle
from pipeline.share.pack import pack_bundle
from pipeline.share.signing import TRUSTED_KEYS_ENV, generate_key
from pipeline.share.templates import TEMPLATE_ENV, template_dirs
from pipeline.share.trust import UnverifiedBundleError, check_bundle_folder

NET = {"spatial_dims": 2, "in_channels": 1, "backbone": "resnet10", "decoder_channels": [16, 8, 8, 8, 8]}
CLASSES = ["matrix", "grain", "pore"]


def _net() -> PretrainedUNet:
    return PretrainedUNet(**NET, out_channels=len(CLASSES))


@pytest.fixture(scope="module")
def site_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    key, pub, _ = generate_key(tmp_path_factory.mktemp("keys") / "site_a", "site A")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TRUSTED_KEYS_ENV, str(pub))
        mp.delenv(TEMPLATE_ENV, raising=False)
        yield key


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory, site_key: Path) -> Path:
    """Your own training output: the 2D bundle's configs with a small decoder and its weights (no manifest)."""
    bundle = tmp_path_factory.mktemp("site_a") / BUNDLE_2D.name
    shutil.copytree(BUNDLE_2D, bundle, ignore=shutil.ignore_patterns("models", "runs", "eval", ".*"))
    for name in ("train.json", "inference.json"):
        cfg = json.loads((bundle / "configs" / name).read_text())
        cfg.update(decoder_channels=NET["decoder_channels"], backbone=NET["backbone"])
        (bundle / "configs" / name).write_text(json.dumps(cfg, indent=4))
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(_net().state_dict(), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory, local: Path, site_key: Path) -> Path:
    """``local`` packed and signed by site A, imported at site B (a folder holding manifest.json)."""
    zip_path = tmp_path_factory.mktemp("zip") / "a.zip"
    pack_bundle(local, zip_path, export="none", notes="site A", sign=site_key)
    target, report = import_bundle(zip_path, tmp_path_factory.mktemp("site_b"))
    assert report.ok and (target / "manifest.json").is_file()
    return target


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(bundle: Path, name: str, **changes) -> None:
    path = bundle / "configs" / name
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg, indent=4))


# ------------------------------------------------------------------------------------------------ load_pretrained
def test_load_pretrained_refuses_a_local_folder_unless_told(local: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(UnverifiedBundleError, match=r"not a verified bundle \(no manifest.json.*`pipeline import`"):
        load_pretrained(_net(), local)
    with pytest.raises(ValueError, match=r"trust_unverified=True \(finetune.json: --trust_unverified true\)"):
        pretrained_network(_net(), str(local))
    with caplog.at_level(logging.WARNING, logger="pipeline.share.trust"):
        assert load_pretrained(_net(), local, trust_unverified=True, strict=True).loaded
        assert pretrained_network(_net(), str(local), {"trust_unverified": True}).load_report.loaded
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 2
    assert "UNVERIFIED bundle folder" in caplog.records[0].getMessage()
    assert load_pretrained(_net(), local / "models" / "model.pt", strict=True).loaded  # a weights file: unchanged


def test_a_received_folder_is_verified_like_its_zip(received: Path, tmp_path: Path, capsys) -> None:
    assert load_pretrained(_net(), received, strict=True).loaded
    assert from_bundle(received, overrides={"device": "cpu"}).labels == dict(enumerate(CLASSES))
    added = _copy(received, tmp_path / "added")
    (added / "docs" / "notes.md").write_text("added after import\n")
    with pytest.raises(UnverifiedBundleError, match=r"docs/notes.md: file not listed in manifest.json"):
        load_pretrained(_net(), added)
    changed = _copy(received, tmp_path / "changed")
    _edit(changed, "inference.json", sw_batch_size=1)
    with pytest.raises(UnverifiedBundleError, match=r"configs/inference.json: sha256 mismatch.*--trust-unverified"):
        from_bundle(changed)
    out = tmp_path / "out"
    assert main(["infer", "--bundle", str(changed), str(tmp_path), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configs/inference.json: sha256 mismatch" in err and "Traceback" not in err
    assert from_bundle(changed, overrides={"device": "cpu"}, trust_unverified=True) is not None
    # the signature counts: another site's key does not prove it, unless unsigned bundles are allowed
    _, other, _ = generate_key(tmp_path / "other", "site C")
    with pytest.raises(UnverifiedBundleError, match="not among your trusted keys"):
        load_pretrained(_net(), received, trusted_keys=str(other))
    assert load_pretrained(_net(), received, trusted_keys=str(other), allow_unsigned=True).loaded


# ------------------------------------------------------------------------------------------------ infer / from_bundle
def test_a_local_folder_runs_only_template_code_with_allowed_parameters(
    local: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert from_bundle(local, overrides={"device": "cpu"}).labels == dict(enumerate(CLASSES))
    marker = tmp_path / "pwned"
    hostile = _copy(local, tmp_path / "hostile")
    _edit(hostile, "inference.json", initialize=[f"$__import__('os').system('touch {marker}')"])
    with pytest.raises(UnverifiedBundleError, match=r"configs/inference.json#initialize#0: .*--trust-unverified"):
        from_bundle(hostile)
    assert main(["infer", "--bundle", str(hostile), str(tmp_path), str(tmp_path / "o"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "configs/inference.json#initialize#0" in err and "Traceback" not in err
    assert not marker.exists()
    bad_roi = _copy(local, tmp_path / "roi")
    _edit(bad_roi, "inference.json", roi_size=[0, 32])
    with pytest.raises(UnverifiedBundleError, match=r"configs/inference.json#roi_size: \[0, 32\] breaks the rule"):
        from_bundle(bad_roi)
    meta = _copy(local, tmp_path / "meta")
    _edit(meta, "metadata.json", description=f"$__import__('os').system('touch {marker}')")
    with pytest.raises(UnverifiedBundleError, match=r"configs/metadata.json#description: .*plain data"):
        from_bundle(meta)
    assert not marker.exists()


@pytest.mark.parametrize("bundle", [BUNDLE_3D, BUNDLE_2D])
def test_the_toolkit_bundles_run_without_the_flag(bundle: Path) -> None:
    report = check_bundle_folder(bundle, "run", config_files=["inference.json"])
    assert report is not None and report.ok


# ------------------------------------------------------------------------------------------------ packaged templates
def test_templates_come_from_the_checkout_else_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from setuptools import Distribution

    from pipeline.share.packaging import BuildPyWithTemplates, template_sources

    monkeypatch.delenv(TEMPLATE_ENV, raising=False)
    assert template_dirs() == [BUNDLE_3D, BUNDLE_2D]  # a source checkout: bundles/ itself
    cmd = BuildPyWithTemplates(Distribution({"name": "pipeline", "packages": []}))
    cmd.ensure_finalized()
    cmd.build_lib = str(tmp_path / "lib")
    cmd.run()
    packaged = tmp_path / "lib" / "pipeline" / "_templates"
    sources = template_sources()
    assert {p.relative_to(BUNDLE_3D.parent) for p in sources} == {
        p.relative_to(packaged) for p in packaged.rglob("*") if p.is_file()
    }
    assert all((packaged / p.relative_to(BUNDLE_3D.parent)).read_bytes() == p.read_bytes() for p in sources)
    # an installed wheel: no bundles/ beside the package, the packaged copies are found
    monkeypatch.setattr("pipeline.bundle.config.BUNDLE_3D", tmp_path / "none" / BUNDLE_3D.name)
    monkeypatch.setattr("pipeline.bundle.config.BUNDLE_2D", tmp_path / "none" / BUNDLE_2D.name)
    monkeypatch.setattr("importlib.resources.files", lambda package: tmp_path / "lib" / package)
    assert template_dirs() == [packaged / BUNDLE_3D.name, packaged / BUNDLE_2D.name]
    report = check_bundle_folder(BUNDLE_2D, "run", config_files=["inference.json", "train.json"])
    assert report is not None and report.ok

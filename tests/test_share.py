"""pack -> verify -> import of a tiny bundle, and every refusal: tampering, pickles, zip tricks, code, data, paths."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.share.archive import check_zip_entries
from pipeline.share.install import import_bundle, open_verified_bundle
from pipeline.share.logconf import LOGGING_CONF, scan_logging_conf
from pipeline.share.pack import pack_bundle
from pipeline.share.report import BundleVerificationError, ShareError
from pipeline.share.scan import check_expression, check_target
from pipeline.share.signing import TRUSTED_KEYS_ENV, generate_key
from pipeline.share.templates import TEMPLATE_ENV
from pipeline.share.verify import verify_bundle

NAME = "tiny_segmentation"
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
NET = {
    "_target_": "monai.networks.nets.BasicUNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "features": [2, 2, 2, 2, 2, 2],
}


def _tensor(channels: int, channel_def: dict | None = None) -> dict:
    spec = {
        "type": "image",
        "format": "magnitude",
        "modality": "CT",
        "num_channels": channels,
        "spatial_shape": [32, 32, 32],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": True,
        "channel_def": channel_def or {"0": "image"},
    }
    return spec


def make_bundle(root: Path) -> Path:
    """A schema-valid bundle with a 2-feature BasicUNet and its weights, in ``root/tiny_segmentation``."""
    b = root / NAME
    for sub in ("configs", "models", "docs"):
        (b / sub).mkdir(parents=True)
    meta = {
        "schema": SCHEMA_URL,
        "version": "0.1.0",
        "changelog": {"0.1.0": "initial"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2.4.0",
        "required_packages_version": {},
        "task": "tiny organ segmentation",
        "description": "test bundle",
        "authors": "site A",
        "copyright": "site A",
        "network_data_format": {
            "inputs": {"image": _tensor(1)},
            "outputs": {"pred": {**_tensor(2, {"0": "background", "1": "organ"}), "type": "image"}},
        },
    }
    (b / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": NET,
        "network": "$@network_def.to(@device)",
        "ckpt": "$@bundle_root + '/models/model.pt'",
    }
    (b / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    (b / "configs" / "logging.conf").write_text(LOGGING_CONF)
    (b / "LICENSE").write_text("Apache-2.0\n")
    (b / "docs" / "README.md").write_text("# tiny\n")
    torch.manual_seed(0)
    from monai.networks.nets import BasicUNet

    net = BasicUNet(**{k: v for k, v in NET.items() if k != "_target_"})
    torch.save(net.state_dict(), b / "models" / "model.pt")
    prov = {
        "training_cases": 12,
        "class_frequencies": {"background": 0.9, "organ": 0.1},
        "validation_metrics": {"dice": {"organ": 0.81}},
        "spacing": {"median": [1.0, 1.0, 2.5]},
        "image_files": ["/data/site_a/patient_001.nii.gz"],
        "per_case": {"1.2.840.113619.2.55.3": 0.7},
    }
    (b / "models" / "provenance_input.json").write_text(json.dumps(prov))
    return b


@pytest.fixture(scope="module", autouse=True)
def site_b_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Site B has the tiny bundle's configs installed as its templates (as the toolkit's bundles are)."""
    templates = make_bundle(tmp_path_factory.mktemp("site_b_templates"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TEMPLATE_ENV, str(templates))
        mp.setenv(TRUSTED_KEYS_ENV, str(site_a_key(tmp_path_factory)) + ".pub")
        yield templates


def site_a_key(factory: pytest.TempPathFactory) -> Path:
    """Site A's signing key (site B trusts its .pub)."""
    key = factory.getbasetemp() / "keys" / "site_a"
    if not key.exists():
        generate_key(key, "site A")
    return key


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site_a")
    bundle = make_bundle(root)
    key = site_a_key(tmp_path_factory)
    result = pack_bundle(bundle, root / "tiny.zip", bump="patch", notes="retrained", sign=key)  # export: script
    assert result.version == "0.1.1" and result.signer
    return result.zip_path


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None], manifest: bool = False) -> Path:
    """Copy a zip entry by entry after ``edit(entries)``; ``manifest=True`` recomputes the manifest (an attacker
    without site A's key: the signature is dropped)."""
    with zipfile.ZipFile(src) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    edit(entries)
    if manifest:
        entries.pop(f"{NAME}/signature.json", None)
        files = {
            n.split("/", 1)[1]: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
            for n, d in entries.items()
            if not n.endswith(("/manifest.json", "/signature.json"))
        }
        entries[f"{NAME}/manifest.json"] = json.dumps({"files": files}).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    return dst


def failed(report) -> dict[str, str]:
    return {i.item: i.reason for i in report.items if i.status == "FAIL"}


def set_config(entries: dict[str, bytes], key: str, value) -> None:
    name = f"{NAME}/configs/inference.json"
    cfg = json.loads(entries[name])
    cfg[key] = value
    entries[name] = json.dumps(cfg).encode()


def test_round_trip(packed: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(packed) as zf:
        names = set(zf.namelist())
        prov = zf.read(f"{NAME}/provenance.json").decode()
        meta = json.loads(zf.read(f"{NAME}/configs/metadata.json"))
    assert {f"{NAME}/{p}" for p in ("manifest.json", "provenance.json", "models/model.ts", "models/model.pt")} <= names
    assert f"{NAME}/models/provenance_input.json" not in names
    assert meta["version"] == "0.1.1" and meta["changelog"]["0.1.1"] == "retrained"
    p = json.loads(prov)
    assert p["training"]["training_cases"] == 12 and p["training"]["validation_metrics"]["dice"]["organ"] == 0.81
    assert "/data" not in prov and "patient" not in prov and "1.2.840" not in prov and p["fields_dropped"] == 2
    report = verify_bundle(packed)
    assert report.ok, report.format()
    assert any(i.check == "network" and i.status == "pass" for i in report.items)
    target, _ = import_bundle(packed, tmp_path / "site_b")
    assert target == tmp_path / "site_b" / NAME and (target / "configs" / "inference.json").is_file()
    with zipfile.ZipFile(target / "models" / "model.ts") as zf:  # no sender paths in TorchScript debug info
        assert not any(n.endswith(".debug_pkl") or b"site-packages" in zf.read(n) for n in zf.namelist())
    ts = torch.jit.load(str(target / "models" / "model.ts"))
    assert ts(torch.rand(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    assert verify_bundle(target).ok
    with pytest.raises(ShareError, match="exists; refusing to overwrite"):
        import_bundle(packed, tmp_path / "site_b")
    assert main(["import", str(packed), "--to", str(tmp_path / "site_b")]) == 1
    (target / "docs" / "README.md").write_text("local edit")
    assert main(["import", str(packed), "--to", str(tmp_path / "site_b"), "--force"]) == 0
    assert (target / "docs" / "README.md").read_text() == "# tiny\n"


def test_cli_verify_json_and_open_verified(packed: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert main(["verify", str(packed), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["ok"] and data["bundle"] == NAME and data["version"] == "0.1.1"
    first = open_verified_bundle(packed, cache_dir=tmp_path / "cache")
    assert (first / "models" / "model.pt").is_file()
    assert open_verified_bundle(packed, cache_dir=tmp_path / "cache") == first


def _flip_weights(e: dict[str, bytes]) -> None:
    data = bytearray(e[f"{NAME}/models/model.pt"])
    data[len(data) // 2] ^= 0xFF
    e[f"{NAME}/models/model.pt"] = bytes(data)


@pytest.mark.parametrize(
    "edit, item, reason",
    [
        (_flip_weights, "models/model.pt", "sha256 mismatch"),
        (lambda e: set_config(e, "device", "$torch.device('cuda')"), "configs/inference.json", "sha256 mismatch"),
        (lambda e: e.update({f"{NAME}/docs/extra.md": b"hi"}), "docs/extra.md", "not listed in manifest"),
    ],
    ids=["flipped-byte", "edited-config", "added-file"],
)
def test_tampering_is_refused(packed: Path, tmp_path: Path, edit, item: str, reason: str) -> None:
    report = verify_bundle(rewrite(packed, tmp_path / "t.zip", edit))
    assert not report.ok and reason in failed(report)[item]
    assert any(i.check == "network" and i.status == "skipped" for i in report.items)  # nothing instantiated


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_refused_without_running(packed: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"w": _Payload(marker)}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)  # control: the payload is live
    assert marker.exists()
    marker.unlink()

    def edit(e: dict[str, bytes]) -> None:
        e[f"{NAME}/models/model.pt"] = buf.getvalue()

    report = verify_bundle(rewrite(packed, tmp_path / "p.zip", edit, manifest=True))
    assert "weights_only=True" in failed(report)["models/model.pt"]
    assert not marker.exists()
    assert main(["import", str(tmp_path / "p.zip"), "--to", str(tmp_path / "b")]) == 1
    assert not marker.exists() and not (tmp_path / "b" / NAME).exists()


@pytest.mark.parametrize(
    "entry, reason",
    [
        (f"{NAME}/../escaped.txt", "'..'"),
        ("/tmp/evil_abs.txt", "absolute path"),
        (f"{NAME}/docs/README.md", "duplicate"),
    ],
    ids=["dotdot", "absolute", "duplicate"],
)
def test_unsafe_zip_entries_refused(packed: Path, tmp_path: Path, entry: str, reason: str) -> None:
    bad = tmp_path / "z.zip"
    rewrite(packed, bad, lambda e: None)
    with zipfile.ZipFile(bad, "a") as zf, pytest.warns(UserWarning) if "duplicate" in reason else nullcontext():
        zf.writestr(entry, b"x")
    report = verify_bundle(bad)
    assert reason in failed(report)[entry]
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/evil_abs.txt").exists()
    with pytest.raises(BundleVerificationError, match="failed verification"):
        import_bundle(bad, tmp_path / "site_b")
    assert not (tmp_path / "site_b" / NAME).exists()


def test_symlink_entry_refused(packed: Path, tmp_path: Path) -> None:
    bad = rewrite(packed, tmp_path / "s.zip", lambda e: None)
    info = zipfile.ZipInfo(f"{NAME}/docs/link")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr(info, "/etc/passwd")
    assert "symbolic link" in failed(verify_bundle(bad))[f"{NAME}/docs/link"]


def test_zip_bomb_ratio_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{NAME}/docs/zeros.txt", b"\0" * (2 << 20))
    with zipfile.ZipFile(bomb) as zf:
        _, problems = check_zip_entries(zf)
    assert problems and "compression ratio" in problems[0][1]


def test_untrusted_code_listed_and_trust(packed: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def edit(e: dict[str, bytes]) -> None:
        set_config(e, "evil", {"_target_": "os.system", "command": f"touch {marker}"})
        set_config(e, "evil2", f"$__import__('os').system('touch {marker}')")
        set_config(e, "network_def", {**NET, "_target_": "collections.OrderedDict"})
        e[f"{NAME}/scripts/helper.py"] = b"import os"

    bad = rewrite(packed, tmp_path / "c.zip", edit, manifest=True)
    fails = failed(verify_bundle(bad))
    assert "code file" in fails["scripts/helper.py"]
    assert (
        "os.system" in fails["configs/inference.json#evil"]
        and "not in the receiver's" in fails["configs/inference.json#evil"]
    )
    assert "__import__" in fails["configs/inference.json#evil2"]
    assert "must be the receiver's template's own" in fails["configs/inference.json#network_def#_target_"]
    assert not marker.exists()
    # trusting reviewed items (by id, or a string value exactly) leaves the others failing
    report = verify_bundle(
        bad, trust=["configs/inference.json#network_def#_target_", "scripts/*.py"], allow_unsigned=True
    )
    assert set(failed(report)) == {"configs/inference.json#evil", "configs/inference.json#evil2"}
    trusted = {i.item for i in report.items if i.status == "trusted"}
    assert trusted == {"configs/inference.json#network_def#_target_", "scripts/helper.py"}
    ok = rewrite(packed, tmp_path / "ok.zip", lambda e: set_config(e, "device", "$torch.device('cuda:1')"), True)
    assert not verify_bundle(ok).ok
    assert main(["verify", str(ok), "--trust", "$torch.device('cuda:1')"]) == 1  # unsigned now
    assert main(["verify", str(ok), "--allow-unsigned", "--trust", "$torch.device('cuda:1')"]) == 0
    assert not marker.exists()


@pytest.mark.parametrize(
    "expr, safe",
    [
        ("$@network_def.to(@device)", True),
        ("$[x * 2 for x in @sizes]", True),
        ("$from monai.transforms import Compose", True),
        ("$@bundle_root + '/models/model.pt'", True),
        ("$__import__('os').system('x')", False),
        ("$torch.os.system('x')", False),
        ("$@net.__class__.__init__.__globals__", False),
        ("$getattr(torch, 'load')", False),
        ("$import subprocess", False),
        ("$torch.load(@f, weights_only=False)", False),
        ("$monai.utils.optional_import('os')", False),
        ("$torch.hub.load('x', 'y')", False),
        ("$from pipeline.utils.atomic import write_text", False),
        ("$pipeline.share.install.import_bundle('x.zip', '/tmp')", False),
        ("$torch.save(@network_def.state_dict(), '/etc/x')", False),
    ],
)
def test_expression_table(expr: str, safe: bool) -> None:
    assert (check_expression(expr) is None) is safe


@pytest.mark.parametrize(
    "target, safe",
    [
        ("monai.networks.nets.BasicUNet", True),
        ("BasicUNet", True),
        ("os.system", False),
        ("torch.os.system", False),
        ("eval", False),
        # what the shipped bundles use
        ("pipeline.networks.stages.param_groups", True),
        ("pipeline.handlers.checkpoint.TrainingCheckpointer", True),
        ("pipeline.inference.engine.BatchInference", True),
        # file writers and subprocess runners of our own package: a shared config could overwrite any file
        ("pipeline.utils.atomic.write_text", False),
        ("pipeline.handlers.checkpoint_files.atomic_save", False),
        ("pipeline.networks.drift.write_drift_csv", False),
        ("pipeline.apps.demo.run_bundle", False),
        ("pipeline.cli.main", False),
        ("pipeline.data.synthetic.make_dataset", False),
        ("torch.save", False),
    ],
)
def test_target_table(target: str, safe: bool) -> None:
    assert (check_target(target) is None) is safe


def test_logging_conf_scan() -> None:
    assert all(i.reason is None for i in scan_logging_conf(LOGGING_CONF, "configs/logging.conf"))
    evil = LOGGING_CONF.replace("args=(sys.stdout,)", "args=(__import__('os').system('x'),)").replace(
        "format=%(asctime)s", "class=evilmod.Formatter\nformat=%(asctime)s"
    )
    bad = {i.item: i.reason for i in scan_logging_conf(evil, "configs/logging.conf") if i.reason}
    assert set(bad) == {
        "configs/logging.conf#handler_consoleHandler#args",
        "configs/logging.conf#formatter_fullFormatter#class",
    }


def test_pack_refusals(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    (bundle / "models" / "model.pt").rename(tmp_path / "model.pt")
    with pytest.raises(ShareError, match="no trained weights"):
        pack_bundle(bundle, tmp_path / "a.zip")
    (tmp_path / "model.pt").rename(bundle / "models" / "model.pt")
    (bundle / "docs" / "case.nii.gz").write_bytes(b"\x1f\x8b")
    (bundle / "docs" / "scan.bin").write_bytes(b"\0" * 128 + b"DICM")
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg["dataset_dir"] = "/data/site_a/images"
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(ShareError) as err:
        pack_bundle(bundle, tmp_path / "a.zip")
    msg = str(err.value)
    assert "docs/case.nii.gz" in msg and "docs/scan.bin: DICOM" in msg
    assert "configs/inference.json#dataset_dir: absolute/site path '/data/site_a/images'" in msg
    assert not (tmp_path / "a.zip").exists()
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["version"] == "0.1.0"


def test_pack_never_overwrites_and_needs_changelog(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path)
    out = tmp_path / "b.zip"
    out.write_bytes(b"keep")
    with pytest.raises(ShareError, match="exists; refusing to overwrite"):
        pack_bundle(bundle, out, export="none")
    assert out.read_bytes() == b"keep"
    with pytest.raises(ShareError, match="needs --notes"):
        pack_bundle(bundle, out, bump="minor", force=True, export="none")
    meta_file = bundle / "configs" / "metadata.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), "changelog": {}}))
    with pytest.raises(ShareError, match="no entry for version '0.1.0'"):
        pack_bundle(bundle, out, force=True, export="none")
    assert main(["pack", str(bundle), "-o", str(out), "--force", "--export", "trace", "--notes", "first"]) == 0
    with zipfile.ZipFile(out) as zf:
        assert json.loads(zf.read(f"{NAME}/provenance.json"))["torchscript"] == "trace"
    assert json.loads(meta_file.read_text())["changelog"] == {"0.1.0": "first"}

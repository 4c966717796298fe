"""A corpus of hostile bundles, built by code from the legitimate 2D bundle: each is refused by verify and import,
and no payload runs (every payload only touches a marker file under tmp_path; the marker never appears).

The recipes are those of issue #16: ``#`` vs ``::`` in expressions, ID-path keys, code-running callables inside
allowed namespaces, file writers, logging.conf interpolation, non-finite weights, and the smaller items.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from pipeline.bundle.config import BUNDLE_2D, BUNDLE_3D
from pipeline.cli import main
from pipeline.networks.unet import PretrainedUNet
from pipeline.networks.weights import load_pretrained
from pipeline.share.archive import check_zip_entries
from pipeline.share.install import import_bundle
from pipeline.share.logconf import LOGGING_CONF, scan_logging_conf
from pipeline.share.pack import pack_bundle
from pipeline.share.report import BundleVerificationError, ShareError
from pipeline.share.signing import TRUSTED_KEYS_ENV, fingerprint, generate_key
from pipeline.share.templates import check_against_template, data_only_problems, flatten
from pipeline.share.verify import verify_bundle

NAME = BUNDLE_2D.name
TRAIN = f"{NAME}/configs/train.json"
NET = {"spatial_dims": 2, "in_channels": 1, "backbone": "efficientnet-b0", "decoder_channels": [16, 16, 8, 8, 8]}


# ------------------------------------------------------------------------------------------------ the legit bundle
@pytest.fixture(scope="module")
def site_a_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Site A's key; site B trusts its public half through ``$PIPELINE_TRUSTED_KEYS``."""
    key, pub, _ = generate_key(tmp_path_factory.mktemp("keys") / "site_a", "site A")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TRUSTED_KEYS_ENV, str(pub))
        mp.setenv("PIPELINE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # load_pretrained's verified copies
        yield key


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory, site_a_key: Path) -> Path:
    """The toolkit's 2D bundle with two parameters changed (backbone, decoder_channels) and its weights, packed and
    signed by site A."""
    root = tmp_path_factory.mktemp("site_a")
    bundle = root / NAME
    shutil.copytree(BUNDLE_2D, bundle, ignore=shutil.ignore_patterns("runs", ".*"))
    for name in ("train.json", "inference.json"):
        cfg = json.loads((bundle / "configs" / name).read_text())
        cfg.update(backbone=NET["backbone"], decoder_channels=NET["decoder_channels"])
        (bundle / "configs" / name).write_text(json.dumps(cfg, indent=4))
    classes = json.loads((bundle / "configs" / "train.json").read_text())["class_names"]
    torch.manual_seed(0)
    net = PretrainedUNet(**NET, out_channels=len(classes))
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    result = pack_bundle(bundle, root / "legit.zip", export="none", notes="site A", sign=site_a_key)
    assert result.needs_trust == [] and result.signer
    return result.zip_path


def entries_of(src: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(src) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def repack(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """The full attacker: edit entries, then recompute the manifest so it is consistent again."""
    entries = entries_of(src)
    edit(entries)
    entries.pop(f"{NAME}/signature.json", None)  # the attacker has no trusted key
    files = {
        n.split("/", 1)[1]: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
        for n, d in entries.items()
        if not n.endswith("/manifest.json")
    }
    entries[f"{NAME}/manifest.json"] = json.dumps({"files": files}).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
    return dst


def edit_config(name: str, change: Callable[[dict], None]) -> Callable[[dict[str, bytes]], None]:
    def edit(entries: dict[str, bytes]) -> None:
        cfg = json.loads(entries[f"{NAME}/configs/{name}"])
        change(cfg)
        entries[f"{NAME}/configs/{name}"] = json.dumps(cfg).encode()

    return edit


def failed(report) -> dict[str, str]:
    return {i.item: i.reason for i in report.items if i.status == "FAIL"}


def refused_everywhere(bad: Path, tmp_path: Path, marker: Path, cli: bool = False) -> dict[str, str]:
    """Verify (API, and CLI if asked) and import refuse ``bad``, nothing is installed, the marker never appears."""
    report = verify_bundle(bad, allow_unsigned=True)  # as if a trusted signer had turned: the checks stand alone
    assert not report.ok
    assert not any(i.check == "network" and i.status == "pass" for i in report.items)
    assert not cli or main(["verify", str(bad), "--allow-unsigned"]) == 1
    with pytest.raises(BundleVerificationError):
        import_bundle(bad, tmp_path / "site_b", allow_unsigned=True)
    assert not (tmp_path / "site_b" / NAME).exists()
    assert not marker.exists()
    return failed(report)


def test_legit_bundle_verifies_imports_and_loads(legit: Path, tmp_path: Path) -> None:
    report = verify_bundle(legit)
    assert report.ok, report.format()
    network = {i.item: i.reason for i in report.items if i.check == "network"}
    assert "template" in network["models/model.pt"] and "forward pass" in network["network_def"]
    params = {i.item for i in report.items if i.check == "params"}
    assert "configs/train.json#backbone" in params and "configs/inference.json#decoder_channels" in params
    digest = hashlib.sha256(legit.read_bytes()).hexdigest()
    assert report.sha256 == digest and report.signer
    assert any(i.check == "origin" and i.status == "pass" and report.signer in i.reason for i in report.items)
    target, _ = import_bundle(legit, tmp_path / "site_b", expected_sha256=digest)
    assert (target / "configs" / "logging.conf").read_text() == LOGGING_CONF
    assert verify_bundle(target).ok
    classes = json.loads((target / "configs" / "train.json").read_text())["class_names"]
    for source, kwargs in ((legit, {"sha256": digest}), (target, {})):
        net = PretrainedUNet(**NET, out_channels=len(classes))
        rep = load_pretrained(net, source, strict=True, **kwargs)
        assert len(rep.loaded) == rep.target_total - len(rep.missing)


def test_templates_are_the_toolkit_bundles() -> None:
    for bundle in (BUNDLE_3D, BUNDLE_2D):
        assert (bundle / "configs" / "logging.conf").read_text() == LOGGING_CONF
        for cfg in (bundle / "configs").glob("*.json"):
            data = json.loads(cfg.read_text())
            if cfg.name == "metadata.json":
                assert data_only_problems(data) == {}
            else:
                check = check_against_template(data, data, cfg.name)
                assert check.failures == {} and check.params == {}


# ------------------------------------------------------------------------------------------------ config recipes
def _hash_comment(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(out_channels=f"$3 if [0][0#(__import__('os').system('touch {m}') or 1)\n] else 3")


def _id_path_target(m: str) -> Callable[[dict], None]:
    return lambda c: c.update({"pwn": {"command": f"touch {m}"}, "pwn#_target_": "os.system"})


def _id_path_weights_only(m: str) -> Callable[[dict], None]:
    return lambda c: c.update({"ld": {"_target_": "torch.load", "f": m}, "ld::weights_only": False})


def _collect_env(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn={"_target_": "torch.utils.collect_env.run", "command": f"touch {m}"})


def _timer(m: str) -> Callable[[dict], None]:
    stmt = f"__import__('os').system('touch {m}')"
    return lambda c: c.update(pwn={"_target_": "torch.utils.benchmark.Timer", "stmt": stmt, "_mode_": "callable"})


def _torch_load_zero(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn="$torch.load(@bundle_root + '/docs/logo.png', weights_only=0)")


def _np_allow_pickle(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn="$np.load(@bundle_root + '/docs/notes.txt', allow_pickle='yes')")


def _ndarray_dump(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn=f"$np.zeros(1).dump('{m}')")


def _memmap(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn={"_target_": "numpy.memmap", "filename": m, "mode": "w+", "shape": 1})


def _open_memmap(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn=f"$np.lib.format.open_memmap('{m}', mode='w+', shape=(1,))")


def _summary_writer(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pwn={"_target_": "torch.utils.tensorboard.SummaryWriter", "log_dir": m})


def _literal_replaces_expression(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(device="cpu")


def _expression_in_parameter(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(backbone=f"$__import__('os').system('touch {m}') and 'resnet18'")


def _target_in_literal_dict(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(pretrained_options={"_target_": "os.system", "command": f"touch {m}"})


def _merge_key(m: str) -> Callable[[dict], None]:
    return lambda c: c.update({"+imports": [f"$__import__('os').system('touch {m}')"]})


def _reference(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(backbone="@pwn", pwn=f"$__import__('os').system('touch {m}')")


def _macro(m: str) -> Callable[[dict], None]:
    return lambda c: c.update(backbone="%configs/metadata.json#version")


RECIPES = {
    "hash-comment": (_hash_comment, "out_channels"),
    "id-path-target": (_id_path_target, "pwn#_target_"),
    "id-path-weights-only": (_id_path_weights_only, "ld#weights_only"),
    "collect-env-run": (_collect_env, "pwn"),
    "benchmark-timer": (_timer, "pwn"),
    "torch-load-weights-only-0": (_torch_load_zero, "pwn"),
    "np-load-allow-pickle-yes": (_np_allow_pickle, "pwn"),
    "ndarray-dump": (_ndarray_dump, "pwn"),
    "memmap-w+": (_memmap, "pwn"),
    "open-memmap": (_open_memmap, "pwn"),
    "summary-writer": (_summary_writer, "pwn"),
    "literal-for-expression": (_literal_replaces_expression, "device"),
    "expression-as-parameter": (_expression_in_parameter, "backbone"),
    "target-in-literal-dict": (_target_in_literal_dict, "pretrained_options#_target_"),
    "merge-key": (_merge_key, "+imports"),
    "reference-as-parameter": (_reference, "backbone"),
    "macro-as-parameter": (_macro, "backbone"),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_config_recipes_refused_without_running(legit: Path, tmp_path: Path, recipe: str) -> None:
    marker = tmp_path / "pwned"
    change, item = RECIPES[recipe]

    def edit(entries: dict[str, bytes]) -> None:
        edit_config("train.json", change(str(marker)))(entries)
        pickled = io.BytesIO()
        torch.save({"w": torch.zeros(1)}, pickled)
        entries[f"{NAME}/docs/logo.png"] = pickled.getvalue()  # a pickle named like an image
        entries[f"{NAME}/docs/notes.txt"] = pickled.getvalue()

    fails = refused_everywhere(repack(legit, tmp_path / f"{recipe}.zip", edit), tmp_path, marker, cli=recipe < "i")
    assert any(k.startswith(f"configs/train.json#{item}") for k in fails), fails
    assert "pwn" not in str(marker.parent.iterdir())


def test_recipes_are_live_under_monai(tmp_path: Path) -> None:
    """Control: MONAI really runs the two parser-difference recipes (so refusing them is not vacuous)."""
    from monai.bundle import ConfigParser

    for n, change in enumerate((_hash_comment, _id_path_target)):
        marker = tmp_path / f"control{n}"
        cfg: dict = {}
        change(str(marker))(cfg)
        parser = ConfigParser()
        parser.read_config(str(_write(tmp_path / f"c{n}.json", cfg)))
        parser.get_parsed_content("out_channels" if n == 0 else "pwn")
        assert marker.exists()


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_id_normalisation_and_merging() -> None:
    flat = flatten({"a#b": 1, "c::d": {"e": [2]}, "+f": [3]})
    assert flat["a::b"] == 1 and flat["c::d::e::0"] == 2 and flat["+f::0"] == 3
    template = {"pwn": {"command": "x"}, "n": 3, "net": {"_target_": "T", "k": "a"}}
    check = check_against_template({"pwn#_target_": "os.system", "net::k": "b", "n": 4}, template, "t.json")
    assert set(check.failures) == {"pwn#_target_"}
    assert check.params == {"net::k": "b", "n": 4}
    bad = check_against_template({"n": "x", "net": {"_target_": "T", "k": "/data/x"}}, template, "t.json")
    assert "expected a number" in bad.failures["n"] and "absolute" in bad.failures["net#k"]


def test_received_file_names_and_places(legit: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def edit(entries: dict[str, bytes]) -> None:
        train = entries[TRAIN]
        entries[f"{NAME}/configs/extra.JSON"] = train
        entries[f"{NAME}/configs/run.cfg"] = b"[x]\ny=1\n"
        entries[f"{NAME}/docs/more.json"] = b"{}"
        entries[f"{NAME}/configs/other.json"] = b"{}"
        entries[f"{NAME}/LICENSE.py"] = f"open('{marker}', 'w')".encode()
        entries[f"{NAME}/README.sh"] = b"touch x"

    fails = refused_everywhere(repack(legit, tmp_path / "names.zip", edit), tmp_path, marker)
    assert {"configs/extra.JSON", "configs/run.cfg", "docs/more.json", "LICENSE.py", "README.sh"} <= set(fails)
    assert "configs/other.json" in fails and "has no configs/other.json" in fails["configs/other.json"]


# ------------------------------------------------------------------------------------------------ logging.conf
DEFAULT_TRICK = LOGGING_CONF.replace(
    "[loggers]", "[DEFAULT]\np = ', __import__('os').system('touch {m}')) and (sys.stdout,) or ('\n\n[loggers]"
).replace("args=(sys.stdout,)", "args=('%(p)s',)")


def test_logging_conf_interpolation_refused(legit: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = DEFAULT_TRICK.format(m=marker)
    bad = {i.item for i in scan_logging_conf(text, "configs/logging.conf") if i.reason}
    assert {"configs/logging.conf#DEFAULT#p", "configs/logging.conf#handler_consoleHandler#args"} <= bad
    benign = LOGGING_CONF.replace("level=INFO\nformatter", "level=DEBUG\nformatter")

    def edit(entries: dict[str, bytes]) -> None:
        entries[f"{NAME}/configs/logging.conf"] = text.encode()

    fails = refused_everywhere(repack(legit, tmp_path / "log.zip", edit), tmp_path, marker)
    assert "[DEFAULT]" in fails["configs/logging.conf#DEFAULT#p"]
    report = verify_bundle(
        repack(legit, tmp_path / "log2.zip", lambda e: e.update({f"{NAME}/configs/logging.conf": benign.encode()})),
        allow_unsigned=True,
    )
    assert "differs from the toolkit's logging.conf" in failed(report)["configs/logging.conf"]


# ------------------------------------------------------------------------------------------------ weights
@pytest.mark.parametrize("value, reason", [(float("nan"), "NaN/Inf"), (float("inf"), "NaN/Inf"), (1e9, "|w| up to")])
def test_implausible_weights_refused(legit: Path, tmp_path: Path, value: float, reason: str) -> None:
    entries = entries_of(legit)
    state = torch.load(io.BytesIO(entries[f"{NAME}/models/model.pt"]), weights_only=True)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name].view(-1)[1] = value
    buf = io.BytesIO()
    torch.save(state, buf)
    bad = repack(legit, tmp_path / "w.zip", lambda e: e.update({f"{NAME}/models/model.pt": buf.getvalue()}))
    report = verify_bundle(bad, allow_unsigned=True)
    assert name in failed(report)["models/model.pt"] and reason in failed(report)["models/model.pt"]
    torch.save(state, tmp_path / "w.pt")
    net = PretrainedUNet(**NET, out_channels=state["segmentation_head.0.bias"].shape[0])
    with pytest.raises(ValueError, match=rf"refusing implausible weights: {name}"):
        load_pretrained(net, tmp_path / "w.pt")


# ------------------------------------------------------------------------------------------------ origin
def test_sha256_is_of_the_bytes_extracted(legit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = hashlib.sha256(legit.read_bytes()).hexdigest()
    opened: list[object] = []
    real = zipfile.ZipFile

    def spy(file, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(file)
        return real(file, *args, **kwargs)

    monkeypatch.setattr("pipeline.share.verify.zipfile.ZipFile", spy)
    assert verify_bundle(legit, expected_sha256=digest).ok
    assert opened and all(isinstance(f, io.BytesIO) for f in opened)  # never re-opened by path
    monkeypatch.undo()
    wrong = "0" * 64
    report = verify_bundle(legit, expected_sha256=wrong)
    assert f"sha256 {digest} != expected {wrong}" in failed(report)[legit.name]
    net = PretrainedUNet(**NET, out_channels=3)
    with pytest.raises(BundleVerificationError, match="sha256"):
        load_pretrained(net, legit, sha256=wrong)
    with pytest.raises(ValueError, match="'sha256' applies to a bundle .zip"):
        load_pretrained(net, tmp_path, sha256=digest)


# ------------------------------------------------------------------------------------------------ smaller items
def test_archive_ratio_and_deep_nesting(legit: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(8):
            zf.writestr(f"{NAME}/docs/z{i}.txt", b"\0" * (1 << 20))  # each under the per-file threshold
    with zipfile.ZipFile(bomb) as zf:
        _, problems = check_zip_entries(zf)
    assert any("overall compression ratio" in r for _, r in problems)
    marker = tmp_path / "pwned"
    deep = "[" * 100_000 + "]" * 100_000

    def edit(entries: dict[str, bytes]) -> None:
        entries[f"{NAME}/configs/metadata.json"] = b'{"version": "1", "x": ' + deep.encode() + b"}"
        entries[TRAIN] = b'{"a": ' + deep.encode() + b"}"

    fails = refused_everywhere(repack(legit, tmp_path / "deep.zip", edit), tmp_path, marker)
    assert "nested too deeply" in fails["configs/train.json"]


def test_metadata_is_data_only_and_keys_printed_escaped(legit: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    def edit(entries: dict[str, bytes]) -> None:
        meta = json.loads(entries[f"{NAME}/configs/metadata.json"])
        meta["description"] = f"$__import__('os').system('touch {marker}')"
        entries[f"{NAME}/configs/metadata.json"] = json.dumps(meta).encode()
        edit_config("train.json", lambda c: c.update({"\x1b[2J\x1b[31mred": 1}))(entries)

    bad = repack(legit, tmp_path / "meta.zip", edit)
    fails = refused_everywhere(bad, tmp_path, marker)
    assert "metadata must be plain data" in fails["configs/metadata.json#description"]
    capsys.readouterr()
    assert main(["verify", str(bad), "--allow-unsigned"]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[2J" in out


def test_import_to_a_file_is_a_clear_error(legit: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ShareError, match="not a folder"):
        import_bundle(legit, tmp_path / "file")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ShareError, match="not a folder"):
        import_bundle(legit, tmp_path / "dangling")


def test_special_keys_are_never_parameters() -> None:
    template = {"net": {"_target_": "pipeline.networks.unet.PretrainedUNet", "_disabled_": False, "k": 1}}
    for key, value in (("_target_", "os.system"), ("_disabled_", True), ("_mode_", "debug"), ("_requires_", "x")):
        check = check_against_template({"net": {**template["net"], key: value}}, template, "t.json")
        assert f"net#{key}" in check.failures and check.params == {}


# ------------------------------------------------------------------------------------------------ authorship
def test_signatures(legit: Path, tmp_path: Path, site_a_key: Path, capsys) -> None:
    assert main(["keygen", str(tmp_path / "other"), "--comment", "site C"]) == 0
    out = capsys.readouterr().out
    other_pub = tmp_path / "other.pub"
    raw = __import__("base64").b64decode(other_pub.read_text().split()[1])
    assert fingerprint(raw) in out and oct((tmp_path / "other").stat().st_mode)[-3:] == "600"
    assert main(["keygen", str(tmp_path / "other")]) == 1  # never overwritten
    # the legit bundle: valid with site A's key, unknown to a site trusting only site C, refused unless told
    own = f"{site_a_key}.pub"
    assert verify_bundle(legit, trusted_keys=own).ok
    unknown = verify_bundle(legit, trusted_keys=str(other_pub))
    assert "not among your trusted keys" in failed(unknown)["signature.json"]
    assert verify_bundle(legit, trusted_keys=str(other_pub), allow_unsigned=True).ok
    assert main(["verify", str(legit), "--trusted-keys", str(tmp_path)]) == 1  # folder of keys without site A's
    (tmp_path / "site_a.pub").write_text(Path(own).read_text())
    assert main(["verify", str(legit), "--trusted-keys", str(tmp_path)]) == 0
    # unsigned (attacker re-made the manifest) and a kept signature over a changed manifest
    unsigned = repack(legit, tmp_path / "u.zip", lambda e: None)
    assert "no signature.json" in failed(verify_bundle(unsigned))["signature.json"]
    capsys.readouterr()
    assert main(["verify", str(unsigned), "--allow-unsigned"]) == 0
    assert "ACCEPTED WITHOUT PROOF OF AUTHORSHIP" in capsys.readouterr().out
    signature = entries_of(legit)[f"{NAME}/signature.json"]
    forged = repack(legit, tmp_path / "f.zip", lambda e: e.update({f"{NAME}/docs/x.md": b"x"}))
    with zipfile.ZipFile(forged, "a") as zf:
        zf.writestr(f"{NAME}/signature.json", signature)
    report = verify_bundle(forged, allow_unsigned=True)
    assert "does not match manifest.json" in failed(report)["signature.json"]
    with pytest.raises(BundleVerificationError, match="no signature.json"):
        import_bundle(unsigned, tmp_path / "b")
    with pytest.raises(BundleVerificationError, match="no signature.json"):
        load_pretrained(PretrainedUNet(**NET, out_channels=3), unsigned)
    assert load_pretrained(PretrainedUNet(**NET, out_channels=3), unsigned, allow_unsigned=True).loaded


def test_network_sized_by_parameters_before_it_is_built(legit: Path, tmp_path: Path) -> None:
    """Parameters are literals but still size the network: a huge one is refused before any memory is allocated."""

    def edit(entries: dict[str, bytes]) -> None:  # the largest decoder the parameter rules allow
        for name in ("train.json", "inference.json"):
            edit_config(name, lambda c: c.update(decoder_channels=[2048] * 5))(entries)

    report = verify_bundle(repack(legit, tmp_path / "big.zip", edit), allow_unsigned=True)
    assert "with the sender's parameters it has" in failed(report)["models/model.pt"]


# ------------------------------------------------------------------------------------------------ parameter rules
@pytest.mark.parametrize(
    "change, item, rule",
    [
        ({"lr": 1e9}, "configs/train.json#lr", "lr: a number 0 < x <= 1"),
        ({"class_names": ["a\x1b[31m", "b", "c"]}, "configs/train.json#class_names", "printable characters only"),
        ({"patch_size": [0, 32]}, "configs/train.json#patch_size", "patch_size: 2 or 3 integers 1..1024"),
        ({"backbone": "resnet-evil"}, "configs/train.json#backbone", "backbone: one of ['efficientnet-b0'"),
        ({"intensity#mode": "evil"}, "configs/train.json#intensity#mode", "intensity: an object with 'mode' in"),
        ({"pretrained_options": {"verify": False}}, "configs/train.json#pretrained_options", "'const' true"),
        ({"class_names": ["a", "a", "b"]}, "configs/train.json#class_names", "'uniqueItems'"),
        ({"seed": "x" * 2000}, "configs/train.json#seed", "seed: an integer 0..4294967295"),
    ],
)
def test_parameters_outside_their_rules_are_refused(
    legit: Path, tmp_path: Path, change: dict, item: str, rule: str
) -> None:
    bad = repack(legit, tmp_path / "p.zip", edit_config("train.json", lambda c: c.update(change)))
    fails = failed(verify_bundle(bad, allow_unsigned=True))
    assert list(fails) == [item], fails
    assert "breaks the rule" in fails[item] and rule in fails[item]
    assert "\x1b" not in fails[item] and len(fails[item]) < 600


def test_parameters_within_their_rules_pass(legit: Path, tmp_path: Path) -> None:
    change = {
        "lr": 0.01,
        "class_names": ["matrix", "grain", "pore"],
        "patch_size": [96, 96],
        "intensity": {"mode": "clip_zscore", "a_min": -100, "a_max": 250, "mean": [40.0], "std": 12.5},
        "pixdim": [0.5, 0.5],
        "ce_weight": [0.1, 1.0, 2.0],
        "max_epochs": 300,
    }
    ok = repack(legit, tmp_path / "ok.zip", edit_config("train.json", lambda c: c.update(change)))
    report = verify_bundle(ok, allow_unsigned=True, check_network=False)
    assert report.ok, report.format(failures_only=True)
    params = {i.item for i in report.items if i.check == "params"}
    assert {"configs/train.json#lr", "configs/train.json#intensity", "configs/train.json#ce_weight"} <= params


def test_every_file_type_has_a_content_rule_in_verify(legit: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    def edit(entries: dict[str, bytes]) -> None:
        entries[f"{NAME}/docs/logo.svg"] = b"<svg onload='alert(1)'/>"
        entries[f"{NAME}/docs/notes.md"] = b"fine\x1b]0;pwned\x07"
        entries[f"{NAME}/docs/figure.png"] = b"GIF89a not a png"
        entries[f"{NAME}/models/model.ts"] = b"PK\x05\x06" + b"\0" * 18  # an empty zip: no TorchScript layout
        entries[f"{NAME}/models/extra.safetensors"] = b"\xff" * 8 + b"{}"

    fails = refused_everywhere(repack(legit, tmp_path / "types.zip", edit), tmp_path, marker)
    assert "unexpected file type '.svg'" in fails["docs/logo.svg"]
    assert "control character" in fails["docs/notes.md"]
    assert "magic bytes" in fails["docs/figure.png"]
    assert "0 members" in fails["models/model.ts"]
    assert "header length" in fails["models/extra.safetensors"]

"""Verification of a packed bundle (zip or extracted directory) without trusting it.

Checks run in order: safe zip entries, file types and image data, manifest hashes, metadata schema (offline,
bundled schema), a static scan of every config and ``logging.conf``, weights with ``weights_only=True``,
provenance, and only when all of these pass is ``network_def`` instantiated (``verify_net_in_out``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.share.archive import ZipLimits, check_zip_entries, safe_extract
from pipeline.share.files import (
    MANIFEST,
    PROVENANCE,
    SCHEMA_NAME,
    SCHEMA_SHA256,
    WEIGHT_SUFFIXES,
    bundle_files,
    load_config,
    network_config,
    schema_path,
    sha256_file,
)
from pipeline.share.filetypes import data_file_reason, file_type_reason
from pipeline.share.logconf import scan_logging_conf
from pipeline.share.report import (
    FAIL,
    PASS,
    SKIP,
    TRUSTED,
    WARN,
    BundleVerificationError,
    ShareError,
    VerifyReport,
    first_line,
)
from pipeline.share.scan import collect_imports, scan_config

__all__ = ["verify_dir", "verify_bundle"]

logger = logging.getLogger(__name__)


def _is_trusted(item: str, value: str, trust: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(item, t) or t in (value, value.lstrip("$")) for t in trust)


def _check_manifest(report: VerifyReport, root: Path, files: list[str]) -> None:
    path = root / MANIFEST
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("'files' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        report.add(
            "manifest",
            MANIFEST,
            FAIL,
            f"missing or unreadable ({type(e).__name__}); was the zip made by `pipeline pack`?",
        )
        return
    bad = 0
    for rel in sorted((set(listed) | set(files)) - {MANIFEST}):
        want = listed.get(rel)
        if rel not in files:
            report.add("manifest", rel, FAIL, "listed in manifest.json but missing from the bundle")
        elif not isinstance(want, dict):
            report.add("manifest", rel, FAIL, "file not listed in manifest.json (added after packing?)")
        elif (got := sha256_file(root / rel)) != want.get("sha256") or (root / rel).stat().st_size != want.get("size"):
            report.add(
                "manifest",
                rel,
                FAIL,
                f"sha256 mismatch: expected {want.get('sha256')}, got {got} (modified after packing)",
            )
        else:
            continue
        bad += 1
    if not bad:
        report.add("manifest", MANIFEST, PASS, f"{len(listed)} files match sha256 and size")


def check_schema(report: VerifyReport, meta_file: Path) -> None:
    from monai.bundle import verify_metadata

    try:
        with schema_path() as schema:
            verify_metadata(
                meta_file=str(meta_file),
                filepath=str(schema),
                create_dir=False,
                hash_val=SCHEMA_SHA256,
                hash_type="sha256",
            )
    except Exception as e:  # jsonschema/ValueError/parse errors all mean "invalid"
        report.add("schema", "configs/metadata.json", FAIL, f"{first_line(e)[:300]}")
        return
    report.add("schema", "configs/metadata.json", PASS, f"valid against bundled {SCHEMA_NAME}")


def check_code(report: VerifyReport, root: Path, files: list[str], trust: Iterable[str], trust_all: bool) -> None:
    configs = [f for f in files if f.startswith("configs/") and f.endswith((".json", ".yaml", ".yml"))]
    parsed: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for rel in configs:
        try:
            parsed[rel] = load_config(root / rel)
        except Exception as e:
            report.add("code", rel, FAIL, f"cannot be parsed: {first_line(e)[:200]}")
            continue
        aliases.update(collect_imports(parsed[rel]))
    items = [ci for rel, data in parsed.items() for ci in scan_config(data, rel, aliases)]
    items += [
        ci
        for rel in files
        if rel.startswith("configs/") and rel.endswith(".conf")
        for ci in scan_logging_conf((root / rel).read_text(encoding="utf-8"), rel)
    ]
    for ci in items:
        check = "logging" if ci.kind == "logging" else "code"
        if ci.reason is None:
            report.add(check, ci.item, PASS, f"{ci.kind} {ci.value!r}")
        elif trust_all or _is_trusted(ci.item, ci.value, trust):
            report.add(check, ci.item, TRUSTED, f"{ci.kind} {ci.value!r}: {ci.reason} (trusted by you)")
        else:
            report.add(
                check, ci.item, FAIL, f"{ci.kind} {ci.value!r}: {ci.reason}. If you reviewed it: --trust '{ci.item}'"
            )


def _check_weights(report: VerifyReport, root: Path, files: list[str]) -> None:
    import torch

    for rel in (f for f in files if f.endswith(WEIGHT_SUFFIXES)):
        try:
            obj = torch.load(root / rel, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for pickled code; anything else is also a refusal
            report.add("weights", rel, FAIL, f"refused by torch.load(weights_only=True): {first_line(e)[:200]}")
            continue
        n = len(obj) if isinstance(obj, dict) else 0
        report.add("weights", rel, PASS, f"loads with weights_only=True ({n} entries)")
    if "models/model.pt" not in files:
        report.add("weights", "models/model.pt", FAIL, "missing: a shared bundle must carry trained weights")


def _check_network(report: VerifyReport, root: Path) -> None:
    """Instantiate ``network_def`` (only called after every static check passed)."""
    import torch
    from monai.bundle import ConfigParser, verify_net_in_out

    config = network_config(root)
    if config is None:
        report.add(
            "network", "network_def", WARN, "no configs/inference.json or train.json defines network_def; skipped"
        )
        return
    meta, rel = root / "configs" / "metadata.json", config.relative_to(root).as_posix()
    try:
        verify_net_in_out(
            net_id="network_def", meta_file=str(meta), config_file=str(config), device="cpu", bundle_root=str(root)
        )
        report.add(
            "network", f"{rel}#network_def", PASS, "verify_net_in_out: input/output shapes and dtypes match metadata"
        )
    except Exception as e:
        report.add("network", f"{rel}#network_def", FAIL, f"verify_net_in_out: {first_line(e)[:300]}")
        return
    try:
        parser = ConfigParser()
        parser.read_config(str(config))
        parser["bundle_root"] = str(root)
        net = parser.get_parsed_content("network_def")
        state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
        if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("model", "network", "state_dict"):
            state = next(iter(state.values()))  # a CheckpointSaver dict around a single network
        net.load_state_dict(state, strict=True)
        report.add("network", "models/model.pt", PASS, "state dict matches network_def exactly (strict load)")
    except Exception as e:
        report.add("network", "models/model.pt", FAIL, f"does not fit network_def: {first_line(e)[:300]}")


def verify_dir(
    root: Path, report: VerifyReport, trust: Iterable[str] = (), trust_all: bool = False, check_network: bool = True
) -> VerifyReport:
    """Verify an extracted bundle directory, appending to ``report`` (see :func:`verify_bundle`)."""
    root = Path(root)
    trust = list(trust)
    files, odd = bundle_files(root)
    for rel in odd:
        report.add("files", rel, FAIL, "symbolic link or special file; shared bundles hold regular files only")
    for rel in files:
        if reason := data_file_reason(root / rel):
            report.add("files", rel, FAIL, f"{reason}: shared bundles must not carry image data")
        elif (reason := file_type_reason(rel)) and rel != MANIFEST:
            status = TRUSTED if trust_all or _is_trusted(rel, rel, trust) else FAIL
            report.add(
                "files", rel, status, f"{reason}" + ("" if status == TRUSTED else f". If reviewed: --trust '{rel}'")
            )
    meta_file = root / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        report.bundle, report.version = report.bundle or root.name, str(meta.get("version", ""))
    except (OSError, ValueError) as e:
        report.add("schema", "configs/metadata.json", FAIL, f"missing or not JSON ({type(e).__name__})")
    _check_manifest(report, root, files)
    if meta_file.is_file():
        check_schema(report, meta_file)
    check_code(report, root, files, trust, trust_all)
    _check_weights(report, root, files)
    prov = root / PROVENANCE
    text = prov.read_text(encoding="utf-8", errors="replace") if prov.is_file() else ""
    if not text:
        report.add("provenance", PROVENANCE, WARN, "missing: ask the sender how the model was trained")
    elif re.search(r'"(/|~|[A-Za-z]:\\\\)[^"]*"|\b\d+(\.\d+){4,}\b', text):
        report.add("provenance", PROVENANCE, WARN, "contains path- or UID-like strings; tell the sender")
    else:
        report.add("provenance", PROVENANCE, PASS, "present; no path- or UID-like strings")
    if not check_network:
        report.add("network", "network_def", SKIP, "not requested")
    elif report.ok:
        _check_network(report, root)
    else:
        report.add("network", "network_def", SKIP, "not instantiated: earlier checks failed")
    return report


def verify_zip_into(
    zip_path: Path, dest: Path, report: VerifyReport, limits: ZipLimits, expected_sha256: str | None
) -> Path | None:
    """Check and extract a zip into ``dest``; returns the bundle dir, or None if the archive was refused."""
    if expected_sha256:
        got = sha256_file(zip_path)
        ok = got.lower() == expected_sha256.lower()
        report.add(
            "zip",
            zip_path.name,
            PASS if ok else FAIL,
            "sha256 matches" if ok else f"sha256 {got} != expected {expected_sha256}",
        )
        if not ok:
            return None
    try:
        with zipfile.ZipFile(zip_path) as zf:
            top, problems = check_zip_entries(zf, limits)
            for entry, reason in problems:
                report.add("zip", entry, FAIL, reason)
            if problems or top is None:
                return None
            report.bundle = top
            report.add("zip", zip_path.name, PASS, f"{len(zf.infolist())} entries: safe names, sizes and types")
            safe_extract(zf, dest, limits)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        report.add("zip", zip_path.name, FAIL, f"cannot be read safely: {e}")
        return None
    return dest / top


def verify_bundle(
    path: str | os.PathLike,
    trust: Iterable[str] = (),
    *,
    trust_all: bool = False,
    expected_sha256: str | None = None,
    check_network: bool = True,
    raise_on_fail: bool = False,
    limits: ZipLimits = ZipLimits(),
) -> VerifyReport:
    """Verify a packed bundle (zip or extracted directory) without trusting it.

    Args:
        path: the ``.zip`` from ``pipeline pack`` or a directory holding ``manifest.json``.
        trust: item ids (``configs/train.json#network_def#_target_``, fnmatch patterns allowed) or exact code
            values (``mypkg.Net``) you reviewed and accept.
        trust_all: accept every code item (still refuses bad hashes, unsafe zips and pickled weights).
        expected_sha256: sha256 of the zip, received out of band (proves origin, the manifest cannot).
        check_network: instantiate ``network_def`` and run ``verify_net_in_out`` (only if all else passed).
        raise_on_fail: raise :class:`BundleVerificationError` instead of returning a failed report.
        limits: zip size/ratio/entry-count limits.

    Returns:
        The :class:`VerifyReport`; ``report.ok`` is True only if nothing failed.
    """
    path = Path(path)
    report = VerifyReport(source=str(path))
    if path.is_dir():
        if expected_sha256:
            report.add("zip", str(path), WARN, "--sha256 applies to zip files; a directory cannot be checked by it")
        verify_dir(path, report, trust, trust_all, check_network)
    elif path.is_file():
        with tempfile.TemporaryDirectory(prefix="pipeline-verify-") as tmp:
            root = verify_zip_into(path, Path(tmp), report, limits, expected_sha256)
            if root is not None:
                verify_dir(root, report, trust, trust_all, check_network)
    else:
        raise ShareError(
            f"{path}: no such bundle zip or directory. Pass the file written by `python -m pipeline pack`."
        )
    logger.info("verify %s: %s", path, "OK" if report.ok else "FAILED")
    if raise_on_fail and not report.ok:
        raise BundleVerificationError(report)
    return report

"""Verification of a packed bundle (zip or extracted directory) without trusting it.

Checks run in order: the zip's sha256 (of the bytes that are then extracted), safe zip entries, file types and image
data, manifest hashes, metadata schema (offline, bundled schema), every config against the receiver's own templates
(:mod:`pipeline.share.templates`: code only the template's, at its own id; parameters plain literals), the toolkit's
own ``logging.conf``, weights with ``weights_only=True`` (finite, ``|w| <= 1e6``), provenance; only when all of
these pass is the network built, from the *receiver's template* with the sender's literal parameters, and the
weights loaded into it strictly. Nothing received is evaluated, imported or instantiated.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.share.archive import ZipLimits, check_zip_entries, read_zip_bytes, safe_extract
from pipeline.share.filerules import content_problem
from pipeline.share.files import (
    MANIFEST,
    PROVENANCE,
    SCHEMA_NAME,
    SCHEMA_SHA256,
    WEIGHT_SUFFIXES,
    bundle_files,
    schema_path,
    sha256_file,
)
from pipeline.share.filetypes import data_file_reason, file_type_reason
from pipeline.share.logconf import LOGGING_CONF, scan_logging_conf
from pipeline.share.network import check_network_fits
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
from pipeline.share.signing import SIGNATURE, PublicKey, check_signature, load_trusted_keys
from pipeline.share.templates import TemplateMatch, data_only_problems, match_templates, safe_text
from pipeline.share.tensors import weight_problems

__all__ = ["CONFIG_SUFFIXES", "check_configs", "check_schema", "verify_dir", "verify_bundle", "verify_zip_bytes"]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml", ".cfg", ".conf", ".ini", ".toml")

logger = logging.getLogger(__name__)


def _check_origin(report: VerifyReport, root: Path, keys: list[PublicKey], allow_unsigned: bool) -> None:
    """Authorship: a valid Ed25519 signature of manifest.json by one of ``keys``; else refused unless
    ``allow_unsigned`` (then a loud warning). A signature that does not match is refused always."""
    state, text = check_signature(root, root / MANIFEST, keys)
    if state == "valid":
        report.signer = text.split("key ", 1)[1].split(" ", 1)[0]
        report.add("origin", SIGNATURE, PASS, text)
    elif state == "invalid":
        report.add("origin", SIGNATURE, FAIL, text)
    elif allow_unsigned:
        report.add("origin", SIGNATURE, WARN, f"ACCEPTED WITHOUT PROOF OF AUTHORSHIP (--allow-unsigned): {text}")
    else:
        fix = "get the sender's .pub file (compare its fingerprint by phone) and pass --trusted-keys"
        report.add("origin", SIGNATURE, FAIL, f"{text}; {fix}, or --allow-unsigned to accept it anyway")


def _is_trusted(item: str, value: str, trust: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(item, t) or t in (value, value.lstrip("$")) for t in trust)


def _check_manifest(report: VerifyReport, root: Path, files: list[str]) -> None:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        listed = manifest["files"]
        if not isinstance(listed, dict):
            raise TypeError("'files' is not a mapping")
        if "bundle" in manifest and manifest["bundle"] != root.name:
            reason = f"made for bundle {safe_text(manifest['bundle'], 60)!r}, found in folder {root.name!r}"
            report.add("manifest", MANIFEST, FAIL, reason)
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        report.add(
            "manifest",
            MANIFEST,
            FAIL,
            f"missing or unreadable ({type(e).__name__}); was the zip made by `pipeline pack`?",
        )
        return
    bad = 0
    for rel in sorted((set(listed) | set(files)) - {MANIFEST, SIGNATURE}):
        want = listed.get(rel)
        if rel not in files:
            report.add("manifest", rel, FAIL, "listed in manifest.json but missing from the bundle")
        elif want is None and rel == "configs/logging.conf" and (root / rel).read_bytes() == LOGGING_CONF.encode():
            continue  # written by `pipeline import` into a bundle that came without one
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


def _load_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except RecursionError:
        return None, "nested too deeply to parse (RecursionError); a config is shallow data"
    except (OSError, ValueError) as e:
        return None, f"cannot be parsed: {safe_text(first_line(e), 200)}"


def _config_like(rel: str) -> bool:
    return rel.lower().endswith(CONFIG_SUFFIXES) and rel not in (MANIFEST, PROVENANCE, SIGNATURE)


def check_configs(
    report: VerifyReport,
    root: Path,
    files: list[str],
    trust: Iterable[str] = (),
    trust_all: bool = False,
    templates: list[Path] | None = None,
) -> TemplateMatch | None:
    """Compare every config with the receiver's templates (:mod:`pipeline.share.templates`); nothing is evaluated.

    ``configs/<name>.json`` must match the template's same file (code identical at the same id, parameters plain
    literals), ``configs/metadata.json`` must be plain data, ``configs/logging.conf`` must be the toolkit's
    :data:`LOGGING_CONF`; any other config-like file (``*.JSON``, ``*.yaml``, ``*.cfg``, or outside ``configs/``)
    is refused. Returns the template match (None if no JSON config was found).
    """
    trust = list(trust)
    received: dict[str, Any] = {}
    for rel in (f for f in files if _config_like(f)):
        path = root / rel
        if rel == "configs/logging.conf":
            text = path.read_text(encoding="utf-8", errors="replace")
            bad = [ci for ci in scan_logging_conf(text, rel) if ci.reason]
            for ci in bad:
                report.add("logging", ci.item, FAIL, f"{safe_text(ci.value, 80)!r}: {ci.reason}")
            if not bad and text != LOGGING_CONF:
                report.add(
                    "logging", rel, FAIL, "differs from the toolkit's logging.conf (fileConfig runs it); re-pack it "
                    "with `pipeline pack`, which ships the toolkit's own",
                )  # fmt: skip
            elif not bad:
                report.add("logging", rel, PASS, "the toolkit's own logging.conf")
        elif rel == "configs/metadata.json":
            data, error = _load_json(path)
            problems = {"": error} if error else data_only_problems(data)
            for item, reason in problems.items():
                report.add("code", f"{rel}#{item}" if item else rel, FAIL, reason)
            if not problems:
                report.add("code", rel, PASS, "plain data (no $, @, % values, no id-path keys)")
        elif rel.startswith("configs/") and rel.count("/") == 1 and rel.endswith(".json"):
            data, error = _load_json(path)
            if error:
                report.add("code", rel, FAIL, error)
            else:
                received[rel] = data
        else:
            status = TRUSTED if trust_all or _is_trusted(rel, rel, trust) else FAIL
            report.add(
                "code", rel, status, "config-like file that is not a config of the receiver's templates (only "
                "configs/*.json, metadata.json, logging.conf are allowed)"
                + ("" if status == TRUSTED else f". If reviewed: --trust '{rel}'"),
            )  # fmt: skip
    if not received:
        return None
    match = match_templates(received, report.bundle or root.name, templates)
    where = match.template.name if match.template else "(none)"
    for check in match.checks:
        for cid, reason in check.failures.items():
            item = f"{check.rel}#{cid}" if cid else check.rel
            value = check.values.get(cid)
            text = value if isinstance(value, str) else ""
            if trust_all or (cid and _is_trusted(item, text, trust)):
                report.add("code", item, TRUSTED, f"{reason} (trusted by you: it will run when the bundle runs)")
            else:
                report.add("code", item, FAIL, f"{reason}. If you reviewed it: --trust '{safe_text(item, 200)}'")
        for cid, value in check.params.items():
            report.add("params", f"{check.rel}#{cid.replace('::', '#')}", PASS, f"sender's value {safe_text(value)}")
        if not check.failures:
            report.add("code", check.rel, PASS, f"only template {where}'s code; {len(check.params)} parameter(s) set")
    return match


def _check_weights(report: VerifyReport, root: Path, files: list[str]) -> None:
    import torch

    for rel in (f for f in files if f.endswith(WEIGHT_SUFFIXES)):
        try:
            obj = torch.load(root / rel, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for pickled code; anything else is also a refusal
            report.add("weights", rel, FAIL, f"refused by torch.load(weights_only=True): {first_line(e)[:200]}")
            continue
        if problems := weight_problems(obj if isinstance(obj, dict) else {}):
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            report.add("weights", rel, FAIL, f"implausible weights: {'; '.join(problems[:3])}{more}")
            continue
        n = len(obj) if isinstance(obj, dict) else 0
        report.add("weights", rel, PASS, f"loads with weights_only=True ({n} entries), all finite, |w| <= 1e6")
    if "models/model.pt" not in files:
        report.add("weights", "models/model.pt", FAIL, "missing: a shared bundle must carry trained weights")


def verify_dir(
    root: Path,
    report: VerifyReport,
    trust: Iterable[str] = (),
    trust_all: bool = False,
    check_network: bool = True,
    templates: list[Path] | None = None,
    trusted_keys: list[PublicKey] | None = None,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Verify an extracted bundle directory, appending to ``report`` (see :func:`verify_bundle`)."""
    root = Path(root)
    trust = list(trust)
    _check_origin(report, root, load_trusted_keys(None) if trusted_keys is None else trusted_keys, allow_unsigned)
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
        elif reason := content_problem(root / rel, rel):
            report.add("files", rel, FAIL, f"{reason}; a shared bundle's files must be what their type says")
    meta_file = root / "configs" / "metadata.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
        report.bundle, report.version = report.bundle or root.name, safe_text(meta.get("version", ""), 40)
    except (OSError, ValueError, RecursionError) as e:
        report.add("schema", "configs/metadata.json", FAIL, f"missing or not JSON ({type(e).__name__})")
    _check_manifest(report, root, files)
    if meta_file.is_file():
        check_schema(report, meta_file)
    match = check_configs(report, root, files, trust, trust_all, templates)
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
        check_network_fits(report, root, match)
    else:
        report.add("network", "network_def", SKIP, "not built: earlier checks failed")
    return report


def verify_zip_bytes(
    data: bytes, name: str, dest: Path, report: VerifyReport, limits: ZipLimits, expected_sha256: str | None
) -> Path | None:
    """Hash ``data`` (the zip, read once), check its entries and extract them into ``dest`` from those same bytes.

    Returns the bundle dir, or None if the archive was refused.
    """
    got = hashlib.sha256(data).hexdigest()
    report.sha256 = got
    if expected_sha256:
        ok = got.lower() == expected_sha256.strip().lower()
        report.add(
            "zip", name, PASS if ok else FAIL, "sha256 matches" if ok else f"sha256 {got} != expected {expected_sha256}"
        )
        if not ok:
            return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            top, problems = check_zip_entries(zf, limits)
            for entry, reason in problems:
                report.add("zip", safe_text(entry, 200), FAIL, reason)
            if problems or top is None:
                return None
            report.bundle = top
            report.add("zip", name, PASS, f"{len(zf.infolist())} entries: safe names, sizes and types")
            safe_extract(zf, dest, limits)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError, NotImplementedError) as e:
        report.add("zip", name, FAIL, f"cannot be read safely: {safe_text(first_line(e), 200)}")
        return None
    return dest / top


def verify_zip_into(
    zip_path: Path, dest: Path, report: VerifyReport, limits: ZipLimits, expected_sha256: str | None
) -> Path | None:
    """Read the zip once, then :func:`verify_zip_bytes`; returns the bundle dir, or None if refused."""
    try:
        data = read_zip_bytes(zip_path, limits)
    except (OSError, ValueError) as e:
        report.add("zip", zip_path.name, FAIL, f"cannot be read: {safe_text(first_line(e), 200)}")
        return None
    return verify_zip_bytes(data, zip_path.name, dest, report, limits, expected_sha256)


def verify_bundle(
    path: str | os.PathLike,
    trust: Iterable[str] = (),
    *,
    trust_all: bool = False,
    expected_sha256: str | None = None,
    check_network: bool = True,
    raise_on_fail: bool = False,
    limits: ZipLimits = ZipLimits(),
    templates: list[Path] | None = None,
    trusted_keys: str | os.PathLike | list[PublicKey] | None = None,
    allow_unsigned: bool = False,
) -> VerifyReport:
    """Verify a packed bundle (zip or extracted directory) without trusting it.

    Args:
        path: the ``.zip`` from ``pipeline pack`` or a directory holding ``manifest.json``.
        trust: item ids (``configs/train.json#network_def#_target_``, fnmatch patterns allowed) or exact code
            values (``mypkg.Net``) you reviewed and accept.
        trust_all: accept every code item (still refuses bad hashes, unsafe zips and pickled weights).
        expected_sha256: sha256 of the zip, received out of band (proves origin, the manifest cannot).
        check_network: build ``network_def`` from the receiver's template with the sender's parameters, load the
            weights strictly, run one forward pass (only if all else passed).
        raise_on_fail: raise :class:`BundleVerificationError` instead of returning a failed report.
        limits: zip size/ratio/entry-count limits.
        templates: template bundle folders to compare configs with (default :func:`templates.template_dirs`).
        trusted_keys: public keys (``.pub`` file or folder; default ``$PIPELINE_TRUSTED_KEYS``) whose signature
            of ``manifest.json`` proves who made the bundle.
        allow_unsigned: accept a bundle without a signature by a trusted key (reported as a loud warning).

    Returns:
        The :class:`VerifyReport`; ``report.ok`` is True only if nothing failed.
    """
    path = Path(path)
    report = VerifyReport(source=str(path))
    keys = trusted_keys if isinstance(trusted_keys, list) else load_trusted_keys(trusted_keys)
    args = (trust, trust_all, check_network, templates, keys, allow_unsigned)
    if path.is_dir():
        if expected_sha256:
            report.add("zip", str(path), WARN, "--sha256 applies to zip files; a directory cannot be checked by it")
        verify_dir(path, report, *args)
    elif path.is_file():
        with tempfile.TemporaryDirectory(prefix="pipeline-verify-") as tmp:
            root = verify_zip_into(path, Path(tmp), report, limits, expected_sha256)
            if root is not None:
                verify_dir(root, report, *args)
        if not expected_sha256 and report.sha256 and not report.signer:
            report.add(
                "origin", path.name, WARN, f"sha256 {report.sha256} NOT CHECKED: nothing proves who made this zip; "
                "compare it with the sender's (--sha256) over another channel",
            )  # fmt: skip
    else:
        raise ShareError(
            f"{path}: no such bundle zip or directory. Pass the file written by `python -m pipeline pack`."
        )
    logger.info("verify %s: %s", path, "OK" if report.ok else "FAILED")
    if raise_on_fail and not report.ok:
        raise BundleVerificationError(report)
    return report

"""Bundle exchange between sites: ``pack_bundle``, ``verify_bundle``, ``import_bundle``, ``open_verified_bundle``.

A MONAI bundle is code (``$`` expressions, ``_target_``, ``logging.conf``, pickled checkpoints), so a receiving site
verifies before it runs anything: safe zip entries, manifest hashes, metadata schema (offline, bundled schema),
weights with ``weights_only=True``, a static scan of every config (:mod:`pipeline.share_scan`), and only then is
``network_def`` instantiated (``verify_net_in_out``). See ``docs/sharing-bundles.md``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_path, write_text
from pipeline.share_scan import (
    ZipLimits,
    check_zip_entries,
    collect_imports,
    data_file_reason,
    file_type_reason,
    find_absolute_paths,
    safe_extract,
    scan_config,
    scan_logging_conf,
)

__all__ = [
    "SCHEMA_NAME",
    "ShareError",
    "BundleVerificationError",
    "VerifyItem",
    "VerifyReport",
    "schema_path",
    "sha256_file",
    "load_config",
    "BUMPS",
    "EXPORTS",
    "PackResult",
    "bump_version",
    "build_provenance",
    "pack_bundle",
    "verify_bundle",
    "verify_dir",
    "import_bundle",
    "open_verified_bundle",
]

logger = logging.getLogger(__name__)

SCHEMA_NAME = "meta_schema_20240725.json"
SCHEMA_SHA256 = "d95c74c2915faef04ff6a2d6bd865da922bc8cd5afb4a0719b2dc6e1220528e7"  # integrity of the bundled copy
MANIFEST = "manifest.json"
PROVENANCE = "provenance.json"
WEIGHT_SUFFIXES = (".pt", ".pth")
PASS, FAIL, TRUSTED, WARN, SKIP = "pass", "FAIL", "trusted", "warn", "skipped"


class ShareError(Exception):
    """A pack/verify/import request that cannot be done; the message names the file or key and the fix."""


class BundleVerificationError(ShareError):
    """Verification failed; ``report`` holds every item."""

    def __init__(self, report: VerifyReport) -> None:
        failed = [f"{i.item}: {i.reason}" for i in report.items if i.status == FAIL]
        super().__init__(
            f"bundle {report.source} failed verification ({len(failed)} item(s)):\n  " + "\n  ".join(failed)
        )
        self.report = report


@dataclass
class VerifyItem:
    """One verification result: ``check`` (zip, files, manifest, schema, code, logging, weights, network,
    provenance), ``item`` (file, ``file#id`` or zip entry), ``status`` and ``reason``."""

    check: str
    item: str
    status: str
    reason: str = ""


@dataclass
class VerifyReport:
    """All verification results for one bundle; ``ok`` only if nothing failed."""

    source: str
    bundle: str = ""
    version: str = ""
    items: list[VerifyItem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.status == FAIL for i in self.items)

    def add(self, check: str, item: str, status: str, reason: str = "") -> None:
        self.items.append(VerifyItem(check, item, status, reason))

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            **{k: v for k, v in asdict(self).items() if k != "items"},
            "items": [asdict(i) for i in self.items],
        }

    def format(self, failures_only: bool = False) -> str:
        """A plain-text table: status, check, item, reason, then a one-line verdict."""
        rows = [i for i in self.items if not failures_only or i.status in (FAIL, TRUSTED, WARN)]
        width = min(max([len(i.item) for i in rows] + [4]), 70)
        lines = [f"Verify {self.source}  bundle={self.bundle or '?'} version={self.version or '?'}"]
        lines += [f"{i.status:8} {i.check:10} {i.item:{width}}  {i.reason}".rstrip() for i in rows]
        counts = {s: sum(i.status == s for i in self.items) for s in (FAIL, TRUSTED, WARN, PASS)}
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"RESULT: {verdict} ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())})")
        return "\n".join(lines)


@contextmanager
def schema_path() -> Iterator[Path]:
    """Path to the bundled metadata schema (``pipeline/schemas/meta_schema_20240725.json``)."""
    with resources.as_file(resources.files("pipeline") / "schemas" / SCHEMA_NAME) as p:
        yield Path(p)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_config(path: Path) -> Any:
    """Parse a JSON or YAML config (YAML with ``safe_load`` only)."""
    text = Path(path).read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def _files(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, links/special files) under root as posix relative paths; never follows links."""
    files, odd = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink() or not (p.is_dir() or p.is_file()):
                odd.append(rel)
            elif name in filenames:
                files.append(rel)
    return sorted(files), sorted(odd)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


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


def _check_schema(report: VerifyReport, meta_file: Path) -> None:
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
        report.add("schema", "configs/metadata.json", FAIL, f"{_first_line(e)[:300]}")
        return
    report.add("schema", "configs/metadata.json", PASS, f"valid against bundled {SCHEMA_NAME}")


def _check_code(report: VerifyReport, root: Path, files: list[str], trust: Iterable[str], trust_all: bool) -> None:
    configs = [f for f in files if f.startswith("configs/") and f.endswith((".json", ".yaml", ".yml"))]
    parsed: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    for rel in configs:
        try:
            parsed[rel] = load_config(root / rel)
        except Exception as e:
            report.add("code", rel, FAIL, f"cannot be parsed: {_first_line(e)[:200]}")
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
            report.add("weights", rel, FAIL, f"refused by torch.load(weights_only=True): {_first_line(e)[:200]}")
            continue
        n = len(obj) if isinstance(obj, dict) else 0
        report.add("weights", rel, PASS, f"loads with weights_only=True ({n} entries)")
    if "models/model.pt" not in files:
        report.add("weights", "models/model.pt", FAIL, "missing: a shared bundle must carry trained weights")


def _network_config(root: Path) -> Path | None:
    for name in ("inference.json", "train.json", "inference.yaml", "train.yaml"):
        p = root / "configs" / name
        if p.is_file() and "network_def" in (load_config(p) or {}):
            return p
    return None


def _check_network(report: VerifyReport, root: Path) -> None:
    """Instantiate ``network_def`` (only called after every static check passed)."""
    import torch
    from monai.bundle import ConfigParser, verify_net_in_out

    config = _network_config(root)
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
        report.add("network", f"{rel}#network_def", FAIL, f"verify_net_in_out: {_first_line(e)[:300]}")
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
        report.add("network", "models/model.pt", FAIL, f"does not fit network_def: {_first_line(e)[:300]}")


def verify_dir(
    root: Path, report: VerifyReport, trust: Iterable[str] = (), trust_all: bool = False, check_network: bool = True
) -> VerifyReport:
    """Verify an extracted bundle directory, appending to ``report`` (see :func:`verify_bundle`)."""
    root = Path(root)
    trust = list(trust)
    files, odd = _files(root)
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
        _check_schema(report, meta_file)
    _check_code(report, root, files, trust, trust_all)
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


def _verify_zip_into(
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
            root = _verify_zip_into(path, Path(tmp), report, limits, expected_sha256)
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


def import_bundle(
    zip_path: str | os.PathLike,
    to_dir: str | os.PathLike,
    *,
    trust: Iterable[str] = (),
    trust_all: bool = False,
    force: bool = False,
    expected_sha256: str | None = None,
    check_network: bool = True,
    limits: ZipLimits = ZipLimits(),
) -> tuple[Path, VerifyReport]:
    """Verify a bundle zip and install it as ``to_dir/<bundle_name>``.

    The zip is extracted into a temporary folder inside ``to_dir``, verified there (the bytes verified are the
    bytes installed), then renamed into place. An existing bundle is replaced only with ``force``.

    Returns:
        ``(bundle_dir, report)``.

    Raises:
        BundleVerificationError: verification failed (nothing is installed).
        ShareError: the target exists and ``force`` is False, or ``zip_path`` is not a file.
    """
    zip_path, to_dir = Path(zip_path), Path(to_dir)
    if not zip_path.is_file():
        raise ShareError(f"{zip_path}: not a file. Pass the .zip written by `python -m pipeline pack`.")
    try:
        with zipfile.ZipFile(zip_path) as zf:
            top = zf.infolist()[0].filename.split("/", 1)[0] if zf.infolist() else ""
    except zipfile.BadZipFile as e:
        raise ShareError(f"{zip_path}: not a zip file ({e}).") from e
    target = to_dir / top
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", top) and target.exists() and not force:
        raise ShareError(f"{target} exists; refusing to overwrite an installed bundle. Pass --force to replace it.")
    to_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=to_dir))
    try:
        report = VerifyReport(source=str(zip_path))
        root = _verify_zip_into(zip_path, staging, report, limits, expected_sha256)
        if root is not None:
            verify_dir(root, report, trust, trust_all, check_network)
        if root is None or not report.ok:
            raise BundleVerificationError(report)
        target = to_dir / root.name
        old = None
        if target.exists():
            if not force:
                raise ShareError(f"{target} exists; refusing to overwrite an installed bundle. Pass --force.")
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=to_dir)) / root.name
            os.replace(target, old)
        try:
            os.replace(root, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("imported %s %s into %s", report.bundle, report.version, target)
    return target, report


def open_verified_bundle(
    path: str | os.PathLike,
    *,
    trust: Iterable[str] = (),
    trust_all: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a verified bundle directory for ``path`` (a zip or a packed bundle dir), e.g. for fine-tuning.

    A zip is verified and extracted once into ``cache_dir/<sha256[:16]>/<name>`` (default
    ``$PIPELINE_CACHE_DIR`` or ``~/.cache/pipeline/bundles``); a cached copy is re-verified on every call.

    Raises:
        BundleVerificationError: the bundle failed verification.
    """
    path = Path(path)
    if path.is_dir():
        verify_bundle(path, trust, trust_all=trust_all, raise_on_fail=True)
        return path
    cache_root = Path(
        cache_dir or os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "pipeline" / "bundles"
    )
    digest = sha256_file(path)
    slot = cache_root / digest[:16]
    cached = [p for p in slot.iterdir() if p.is_dir() and not p.name.startswith(".")] if slot.is_dir() else []
    if len(cached) == 1:
        verify_bundle(cached[0], trust, trust_all=trust_all, raise_on_fail=True)
        return cached[0]
    bundle_dir, _ = import_bundle(path, slot, trust=trust, trust_all=trust_all, force=True, expected_sha256=digest)
    return bundle_dir


# ----------------------------------------------------------------------------------------------------- packing
BUMPS = ("patch", "minor", "major")
EXPORTS = ("auto", "script", "trace", "none")
PACKED_DIRS = ("configs", "docs", "scripts")
PACKED_FILES = ("models/model.pt", "LICENSE", "LICENSE.txt", "NOTICE", "README.md")
PROVENANCE_INPUT = "models/provenance_input.json"
# field -> kind; anything else in provenance_input.json is dropped (it may hold paths or patient data).
PROVENANCE_FIELDS = {
    "training_cases": "count",
    "validation_cases": "count",
    "epochs": "count",
    "best_epoch": "count",
    "best_metric": "number",
    "key_metric": "label",
    "spacing": "stats",
    "intensity": "stats",
    "image_size": "stats",
    "class_frequencies": "per_class",
    "cases_missing_class": "per_class",
    "validation_metrics": "per_metric",
}
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")
_STAT = re.compile(r"mean|median|std|min|max|p\d{1,2}(_\d)?")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class PackResult:
    """What :func:`pack_bundle` wrote."""

    zip_path: Path
    bundle: str
    version: str
    sha256: str
    files: int
    torchscript: str
    skipped: list[str] = field(default_factory=list)
    needs_trust: list[str] = field(default_factory=list)


def bump_version(version: str, part: str) -> str:
    """``bump_version("0.1.9", "minor") == "0.2.0"``."""
    m = _SEMVER.fullmatch(version)
    if not m or part not in BUMPS:
        raise ShareError(f"cannot bump {version!r} by {part!r}: expected MAJOR.MINOR.PATCH and one of {BUMPS}.")
    major, minor, patch = map(int, m.groups())
    return {"major": f"{major + 1}.0.0", "minor": f"{major}.{minor + 1}.0", "patch": f"{major}.{minor}.{patch + 1}"}[
        part
    ]


def _update_changelog(meta: dict, bump: str | None, notes: str | None) -> str:
    version, changelog = str(meta.get("version", "")), meta.get("changelog") or {}
    if not _SEMVER.fullmatch(version) or not isinstance(changelog, dict):
        raise ShareError(
            f"configs/metadata.json: 'version' must be MAJOR.MINOR.PATCH and 'changelog' a dict; got {version!r}."
        )
    if bump:
        if not notes:
            raise ShareError(f"--bump {bump} needs --notes 'what changed' for the changelog entry of the new version.")
        version = bump_version(version, bump)
        meta["version"], meta["changelog"] = version, {version: notes, **changelog}
    elif version not in changelog:
        if not notes:
            raise ShareError(
                f"configs/metadata.json: 'changelog' has no entry for version {version!r}. "
                f"Pass --bump patch --notes '...' (new version) or --notes '...' (describe {version})."
            )
        meta["changelog"] = {version: notes, **changelog}
    return version


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _clean_field(kind: str, v: Any, classes: set[str]) -> Any:
    """The value if it is well-formed for ``kind``, else None (whole field dropped)."""
    if kind == "count":
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
    if kind == "number":
        return v if _num(v) else None
    if kind == "label":
        return v if isinstance(v, str) and _LABEL.fullmatch(v) else None
    if not isinstance(v, dict) or not v:
        return None
    if kind == "stats":
        ok = all(
            _STAT.fullmatch(str(k)) and (_num(x) or (isinstance(x, list) and len(x) <= 8 and all(map(_num, x))))
            for k, x in v.items()
        )
        return v if ok else None
    if kind == "per_class":
        return v if all(str(k) in classes and _num(x) for k, x in v.items()) else None
    per = {k: _clean_field("per_class", x, classes) for k, x in v.items() if _LABEL.fullmatch(str(k))}
    return per if len(per) == len(v) and all(x is not None for x in per.values()) else None


def build_provenance(bundle: Path, meta: dict, weights_sha256: str, torchscript: str) -> dict[str, Any]:
    """Provenance for a packed bundle: whitelisted numbers from ``models/provenance_input.json`` and versions.

    Per-class keys must be class names from ``network_data_format.outputs.pred.channel_def`` (or their indices),
    so no case id, patient name, UID or path can travel as a key; free-text values are never copied.
    """
    import platform

    import monai
    import numpy
    import torch

    channel_def = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    classes = {str(k) for k in channel_def} | {str(v) for v in channel_def.values()} | {"mean", "macro", "micro"}
    raw: dict = {}
    src = bundle / PROVENANCE_INPUT
    if src.is_file():
        try:
            raw = json.loads(src.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ShareError(f"{PROVENANCE_INPUT}: not valid JSON ({e}). Fix or delete it, then pack.") from e
    else:
        logger.warning("%s not found: provenance will carry versions only", PROVENANCE_INPUT)
    training = {
        k: c for k, kind in PROVENANCE_FIELDS.items() if (c := _clean_field(kind, raw.get(k), classes)) is not None
    }
    dropped = len(raw) - len(training) if isinstance(raw, dict) else 0
    if dropped:
        logger.warning(
            "provenance: dropped %d field(s) not whitelisted or not well-formed (values not logged)", dropped
        )
    return {
        "bundle": bundle.name,
        "version": meta.get("version"),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "software": {
            "python": platform.python_version(),
            "monai": monai.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
        },
        "weights_sha256": weights_sha256,
        "torchscript": torchscript,
        "training": training,
        "fields_dropped": dropped,
    }


def _input_shape(meta: dict) -> list[int]:
    image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
    shape = [1, int(image.get("num_channels", 1))]
    for s in image.get("spatial_shape", []):
        m = re.fullmatch(r"(\d+)(\*n|\*\*p)?", str(s).replace(" ", ""))
        if not m:
            raise ShareError(
                f"metadata spatial_shape entry {s!r} has no concrete size; pass --input-shape 1 C H W [D]."
            )
        shape.append(int(m.group(1)))
    return shape


def _export_torchscript(stage: Path, meta: dict, mode: str, input_shape: list[int] | None) -> str:
    import warnings

    from monai.bundle import ckpt_export

    config = _network_config(stage)
    if mode == "none":
        return "none"
    if config is None:
        raise ShareError(
            "no configs/inference.json or train.json defines 'network_def'; cannot export. Pass --export none."
        )
    target = stage / "models" / "model.ts"
    kwargs: dict[str, Any] = dict(
        net_id="network_def",
        filepath=str(target),
        ckpt_file=str(stage / "models" / "model.pt"),
        meta_file=str(stage / "configs" / "metadata.json"),
        config_file=str(config),
        bundle_root=str(stage),
    )
    errors = []
    for how in ("script", "trace") if mode == "auto" else (mode,):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if how == "trace":
                    ckpt_export(**kwargs, use_trace=True, input_shape=input_shape or _input_shape(meta))
                else:
                    ckpt_export(**kwargs)
            return how
        except ShareError:
            raise
        except Exception as e:
            errors.append(f"{how}: {_first_line(e)[:200]}")
            logger.info("TorchScript %s export failed; %s", how, errors[-1])
            target.unlink(missing_ok=True)
    raise ShareError(
        f"TorchScript export of network_def failed ({'; '.join(errors)}). "
        "Try --export trace --input-shape 1 1 96 96 96, or --export none."
    )


def _select(bundle: Path) -> tuple[list[str], list[str], list[str]]:
    """(files to pack, files skipped, links/special files in packed areas)."""
    files, odd = _files(bundle)

    def packed(rel: str) -> bool:
        parts = rel.split("/")
        if any(p.startswith(".") or p == "__pycache__" for p in parts) or rel.endswith(".pyc"):
            return False
        return parts[0] in PACKED_DIRS or rel in PACKED_FILES

    return (
        [f for f in files if packed(f)],
        [f for f in files if not packed(f)],
        [f for f in odd if packed(f) or f in (*PACKED_DIRS, "models")],
    )


def _write_zip(stage: Path, name: str, out: Path, force: bool) -> None:
    try:
        with atomic_path(out, overwrite=force) as tmp, zipfile.ZipFile(tmp, "w") as zf:
            for rel in _files(stage)[0]:
                info = zipfile.ZipInfo(f"{name}/{rel}", date_time=_ZIP_TIME)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_STORED if rel.endswith((".pt", ".ts")) else zipfile.ZIP_DEFLATED
                size = (stage / rel).stat().st_size
                with (stage / rel).open("rb") as src, zf.open(info, "w", force_zip64=size > 2**31) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except FileExistsError:
        raise ShareError(f"{out} exists; refusing to overwrite. Pass --force or choose another -o.") from None


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=4) + "\n")


def _pack_problems(bundle: Path, files: list[str], odd: list[str]) -> list[str]:
    problems = [f"{rel}: symbolic link or special file" for rel in odd]
    problems += [f"{rel}: {reason}" for rel in files if (reason := data_file_reason(bundle / rel))]
    for rel in (f for f in files if f.startswith("configs/")):
        if rel.endswith((".json", ".yaml", ".yml")):
            try:
                data = load_config(bundle / rel)
            except Exception as e:
                problems.append(f"{rel}: cannot be parsed ({_first_line(e)})")
                continue
            problems += [f"{item}: absolute/site path {value!r}" for item, value in find_absolute_paths(data, rel)]
        elif rel.endswith(".conf"):
            items = scan_logging_conf((bundle / rel).read_text(encoding="utf-8"), rel)
            problems += [f"{ci.item}: {ci.reason}" for ci in items if ci.reason and "path" in ci.reason]
    return problems


def pack_bundle(
    bundle_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    bump: str | None = None,
    notes: str | None = None,
    force: bool = False,
    export: str = "auto",
    input_shape: list[int] | None = None,
) -> PackResult:
    """Pack a trained bundle into ``<name>/...`` zip with ``manifest.json``, ``provenance.json`` and ``model.ts``.

    Packs ``configs/``, ``docs/``, ``scripts/``, ``models/model.pt``, LICENSE/README; everything else (runs,
    checkpoints, ``provenance_input.json``) stays home. Refuses: no ``models/model.pt``, weights that need
    pickle, image data (by suffix or DICOM magic), absolute/site paths in configs, metadata failing the schema.
    ``configs/metadata.json`` gets the new version/changelog only once the zip is written.

    Args:
        bundle_dir: the bundle folder; its name is the zip's top folder.
        out: output zip; default ``./<name>_v<version>.zip``. Never overwritten unless ``force``.
        bump: ``patch``/``minor``/``major`` to bump ``version`` (needs ``notes``).
        notes: changelog text for the new (or current, if it has none) version.
        force: replace an existing ``out``.
        export: TorchScript export: ``auto`` (script, then trace), ``script``, ``trace`` or ``none``.
        input_shape: trace input shape ``[1, C, *spatial]``; default from metadata ``inputs.image``.
    """
    import torch

    bundle = Path(bundle_dir).resolve()
    meta_file = bundle / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise ShareError(f"{meta_file}: not found; {bundle} is not a MONAI bundle (configs/metadata.json).")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", bundle.name):
        raise ShareError(f"bundle folder name {bundle.name!r} must be a plain name like 'spleen_ct_segmentation'.")
    if not (bundle / "models" / "model.pt").is_file():
        raise ShareError(
            f"{bundle / 'models' / 'model.pt'}: no trained weights. Train first (it is written by the "
            "CheckpointSaver) or copy the final checkpoint there, then pack."
        )
    if export not in EXPORTS:
        raise ShareError(f"export={export!r}; expected one of {EXPORTS}.")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    version = _update_changelog(meta, bump, notes)
    out_path = Path(out) if out else Path.cwd() / f"{bundle.name}_v{version}.zip"
    if out_path.exists() and not force:
        raise ShareError(f"{out_path} exists; refusing to overwrite. Pass --force or choose another -o.")
    files, skipped, odd = _select(bundle)
    if problems := _pack_problems(bundle, files, odd):
        raise ShareError(
            f"refusing to pack {bundle.name}:\n  - " + "\n  - ".join(problems) + "\nFix: remove image data "
            "from the bundle; replace site paths with ids (\"$@bundle_root + '/models'\") or run-time args."
        )
    try:
        torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise ShareError(
            f"models/model.pt does not load with weights_only=True ({_first_line(e)[:200]}); "
            "save a plain state_dict: torch.save(net.state_dict(), 'models/model.pt')."
        ) from e
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{bundle.name}-pack-") as tmp:
        stage = Path(tmp) / bundle.name
        for rel in files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / rel, stage / rel)
        _write_json_atomic(stage / "configs" / "metadata.json", meta)
        check = VerifyReport(source=str(bundle))
        _check_schema(check, stage / "configs" / "metadata.json")
        _check_code(check, stage, files, (), False)
        if any(i.status == FAIL and i.check == "schema" for i in check.items):
            raise ShareError(
                f"configs/metadata.json fails {SCHEMA_NAME}: {check.items[0].reason}. Fix the field and pack again."
            )
        how = _export_torchscript(stage, meta, export, input_shape)
        weights_sha = sha256_file(stage / "models" / "model.pt")
        _write_json_atomic(stage / PROVENANCE, build_provenance(bundle, meta, weights_sha, how))
        listed = {
            rel: {"sha256": sha256_file(stage / rel), "size": (stage / rel).stat().st_size} for rel in _files(stage)[0]
        }
        manifest = {
            "format": "pipeline-bundle-manifest/1",
            "bundle": bundle.name,
            "version": version,
            "algorithm": "sha256",
            "files": listed,
        }
        _write_json_atomic(stage / MANIFEST, manifest)
        _write_zip(stage, bundle.name, out_path, force)
    _write_json_atomic(meta_file, meta)
    needs = [f"{i.item}: {i.reason.split('. If')[0]}" for i in check.items if i.status == FAIL]
    result = PackResult(out_path, bundle.name, version, sha256_file(out_path), len(listed) + 1, how, skipped, needs)
    logger.info("packed %s %s -> %s (sha256 %s)", bundle.name, version, out_path, result.sha256)
    return result

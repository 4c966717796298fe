"""Packing a trained bundle into a shareable zip (``pack_bundle``).

Selects what travels (configs, docs, scripts, weights, licence), refuses image data, site paths and pickled
weights, bumps the version and changelog, exports TorchScript, writes provenance and a sha256 manifest, and
writes the zip atomically; ``configs/metadata.json`` is updated only once the zip exists.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.share.archive import write_zip
from pipeline.share.files import (
    MANIFEST,
    PROVENANCE,
    SCHEMA_NAME,
    bundle_files,
    load_config,
    network_config,
    sha256_file,
)
from pipeline.share.filetypes import data_file_reason
from pipeline.share.logconf import LOGGING_CONF, scan_logging_conf
from pipeline.share.provenance import build_provenance
from pipeline.share.report import FAIL, ShareError, VerifyReport, first_line
from pipeline.share.scan import find_absolute_paths
from pipeline.share.signing import sign_manifest
from pipeline.share.verify import check_configs, check_schema
from pipeline.share.version import update_changelog
from pipeline.utils.atomic import write_text

__all__ = ["EXPORTS", "PACKED_DIRS", "PACKED_FILES", "PackResult", "pack_bundle"]

logger = logging.getLogger(__name__)

EXPORTS = ("auto", "script", "trace", "none")
PACKED_DIRS = ("configs", "docs", "scripts")
PACKED_FILES = ("models/model.pt", "LICENSE", "LICENSE.txt", "NOTICE", "README.md")


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
    signer: str = ""  # fingerprint of the key that signed the manifest ("" if unsigned)


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

    config = network_config(stage)
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
            errors.append(f"{how}: {first_line(e)[:200]}")
            logger.info("TorchScript %s export failed; %s", how, errors[-1])
            target.unlink(missing_ok=True)
    raise ShareError(
        f"TorchScript export of network_def failed ({'; '.join(errors)}). "
        "Try --export trace --input-shape 1 1 96 96 96, or --export none."
    )


def _strip_torchscript_debug(path: Path) -> int:
    """Drop the ``*.debug_pkl`` entries of a TorchScript archive (source ranges that embed the sender's absolute
    site-packages paths); the model loads and runs the same without them. Returns how many were dropped."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        keep = [i for i in src.infolist() if not i.filename.endswith(".debug_pkl")]
        dropped = len(src.infolist()) - len(keep)
        if not dropped:
            return 0
        tmp = path.with_name(path.name + ".strip")
        with zipfile.ZipFile(tmp, "w") as dst:
            for info in keep:
                dst.writestr(info, src.read(info))
    os.replace(tmp, path)
    return dropped


def _select(bundle: Path) -> tuple[list[str], list[str], list[str]]:
    """(files to pack, files skipped, links/special files in packed areas)."""
    files, odd = bundle_files(bundle)

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
                problems.append(f"{rel}: cannot be parsed ({first_line(e)})")
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
    sign: str | os.PathLike | None = None,
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
        sign: Ed25519 private key (``pipeline keygen``) to sign ``manifest.json`` with (``signature.json``).
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
    version = update_changelog(meta, bump, notes)
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
            f"models/model.pt does not load with weights_only=True ({first_line(e)[:200]}); "
            "save a plain state_dict: torch.save(net.state_dict(), 'models/model.pt')."
        ) from e
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{bundle.name}-pack-") as tmp:
        stage = Path(tmp) / bundle.name
        for rel in files:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(bundle / rel, stage / rel)
        _write_json_atomic(stage / "configs" / "metadata.json", meta)
        write_text(stage / "configs" / "logging.conf", LOGGING_CONF)  # the receiver accepts only the toolkit's own
        files = bundle_files(stage)[0]
        check = VerifyReport(source=str(bundle), bundle=bundle.name)
        check_schema(check, stage / "configs" / "metadata.json")
        check_configs(check, stage, files)
        if any(i.status == FAIL and i.check == "schema" for i in check.items):
            raise ShareError(
                f"configs/metadata.json fails {SCHEMA_NAME}: {check.items[0].reason}. Fix the field and pack again."
            )
        how = _export_torchscript(stage, meta, export, input_shape)
        if how != "none":
            _strip_torchscript_debug(stage / "models" / "model.ts")
        weights_sha = sha256_file(stage / "models" / "model.pt")
        _write_json_atomic(stage / PROVENANCE, build_provenance(bundle, meta, weights_sha, how))
        listed = {
            rel: {"sha256": sha256_file(stage / rel), "size": (stage / rel).stat().st_size}
            for rel in bundle_files(stage)[0]
        }
        manifest = {
            "format": "pipeline-bundle-manifest/1",
            "bundle": bundle.name,
            "version": version,
            "algorithm": "sha256",
            "files": listed,
        }
        _write_json_atomic(stage / MANIFEST, manifest)
        signer = sign_manifest(stage / MANIFEST, sign) if sign is not None else ""
        write_zip(stage, bundle.name, out_path, force)
    _write_json_atomic(meta_file, meta)
    needs = [f"{i.item}: {i.reason.split('. If')[0]}" for i in check.items if i.status == FAIL and i.check != "schema"]
    count = len(listed) + 1 + bool(signer)
    result = PackResult(out_path, bundle.name, version, sha256_file(out_path), count, how, skipped, needs, signer)
    logger.info("packed %s %s -> %s (sha256 %s)", bundle.name, version, out_path, result.sha256)
    return result

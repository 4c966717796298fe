"""Installing a shared bundle: verify a zip, then move it into place (``import_bundle``, ``open_verified_bundle``).

The bytes verified are the bytes installed: the zip is extracted and verified inside the target folder, then
renamed into place; a verified copy is cached by the zip's sha256 for fine-tuning.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pipeline.share.archive import ZipLimits
from pipeline.share.files import sha256_file
from pipeline.share.report import BundleVerificationError, ShareError, VerifyReport
from pipeline.share.verify import verify_bundle, verify_dir, verify_zip_into

__all__ = ["import_bundle", "open_verified_bundle"]

logger = logging.getLogger(__name__)


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
        root = verify_zip_into(zip_path, staging, report, limits, expected_sha256)
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

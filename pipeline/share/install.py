"""Installing a shared bundle: verify a zip, then move it into place (``import_bundle``, ``open_verified_bundle``).

The bytes verified are the bytes installed: the zip is read into memory once, hashed, extracted from those bytes and
verified inside the target folder, then renamed into place; a verified copy is cached by the zip's sha256 for
fine-tuning. The installed ``configs/logging.conf`` is always the toolkit's own (:data:`logconf.LOGGING_CONF`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path

from pipeline.share.archive import ZipLimits, read_zip_bytes
from pipeline.share.logconf import LOGGING_CONF
from pipeline.share.report import BundleVerificationError, ShareError, VerifyReport
from pipeline.share.signing import PublicKey, load_trusted_keys
from pipeline.share.verify import verify_bundle, verify_dir, verify_zip_bytes

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
    templates: list[Path] | None = None,
    trusted_keys: str | os.PathLike | list[PublicKey] | None = None,
    allow_unsigned: bool = False,
) -> tuple[Path, VerifyReport]:
    """Verify a bundle zip and install it as ``to_dir/<bundle_name>``.

    The zip is extracted into a temporary folder inside ``to_dir``, verified there (the bytes verified are the
    bytes installed), then renamed into place. An existing bundle is replaced only with ``force``. Arguments as
    :func:`pipeline.share.verify.verify_bundle`; the installed ``configs/logging.conf`` is the toolkit's own.

    Returns:
        ``(bundle_dir, report)``.

    Raises:
        BundleVerificationError: verification failed (nothing is installed).
        ShareError: the target exists and ``force`` is False, or ``zip_path`` is not a file.
    """
    zip_path, to_dir = Path(zip_path), Path(to_dir)
    keys = trusted_keys if isinstance(trusted_keys, list) else load_trusted_keys(trusted_keys)
    if not zip_path.is_file():
        raise ShareError(f"{zip_path}: not a file. Pass the .zip written by `python -m pipeline pack`.")
    if to_dir.exists() and not to_dir.is_dir() or to_dir.is_symlink() and not to_dir.exists():
        raise ShareError(f"--to {to_dir}: not a folder (a file or a dangling link). Pass the folder to install into.")
    try:
        data = read_zip_bytes(zip_path, limits)  # read once: hashed, checked and extracted from these bytes
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            top = zf.infolist()[0].filename.split("/", 1)[0] if zf.infolist() else ""
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise ShareError(f"{zip_path}: not a readable zip file ({e}).") from e
    target = to_dir / top
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", top) and target.exists() and not force:
        raise ShareError(f"{target} exists; refusing to overwrite an installed bundle. Pass --force to replace it.")
    try:
        to_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=to_dir))
    except OSError as e:
        raise ShareError(f"--to {to_dir}: cannot create a folder there ({e}).") from e
    try:
        report = VerifyReport(source=str(zip_path))
        root = verify_zip_bytes(data, zip_path.name, staging, report, limits, expected_sha256)
        if root is not None:
            verify_dir(root, report, trust, trust_all, check_network, templates, keys, allow_unsigned)
        if root is None or not report.ok:
            raise BundleVerificationError(report)
        (root / "configs").mkdir(exist_ok=True)
        (root / "configs" / "logging.conf").write_text(LOGGING_CONF, encoding="utf-8")  # never the sender's
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
    expected_sha256: str | None = None,
    trusted_keys: str | os.PathLike | list[PublicKey] | None = None,
    allow_unsigned: bool = False,
) -> Path:
    """Return a verified bundle directory for ``path`` (a zip or a packed bundle dir), e.g. for fine-tuning.

    A zip is verified and extracted once into ``cache_dir/<sha256>/<name>`` (default ``$PIPELINE_CACHE_DIR`` or
    ``~/.cache/pipeline/bundles``); a cached copy is re-verified on every call. With ``expected_sha256`` (from the
    sender, out of band) only a copy extracted from bytes of that hash is used. ``trusted_keys``/``allow_unsigned``
    as for :func:`pipeline.share.verify.verify_bundle`.

    Raises:
        BundleVerificationError: the bundle failed verification.
    """
    path = Path(path)
    keys = trusted_keys if isinstance(trusted_keys, list) else load_trusted_keys(trusted_keys)
    opts: dict = dict(trust_all=trust_all, trusted_keys=keys, allow_unsigned=allow_unsigned)
    if path.is_dir():
        if expected_sha256:
            raise ShareError(f"{path}: a sha256 applies to a bundle zip, not to a folder. Pass the zip.")
        verify_bundle(path, trust, **opts, raise_on_fail=True)
        return path
    cache_root = Path(
        cache_dir or os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "pipeline" / "bundles"
    )
    if expected_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256.strip()):
        raise ShareError(f"sha256 {expected_sha256!r} is not 64 hex digits; copy it exactly as the sender gave it.")
    digest = (expected_sha256 or "").strip().lower() or hashlib.sha256(read_zip_bytes(path)).hexdigest()
    slot = cache_root / digest
    cached = [p for p in slot.iterdir() if p.is_dir() and not p.name.startswith(".")] if slot.is_dir() else []
    if len(cached) == 1:
        verify_bundle(cached[0], trust, **opts, raise_on_fail=True)
        return cached[0]
    # import hashes the very bytes it extracts and refuses them unless they match `digest`
    try:
        bundle_dir, _ = import_bundle(path, slot, trust=trust, force=True, expected_sha256=digest, **opts)
    except ShareError:
        if slot.is_dir() and not any(slot.iterdir()):
            slot.rmdir()  # leave no empty slot named after a hash nobody verified
        raise
    return bundle_dir

"""Bundle exchange between sites: ``pack_bundle``, ``verify_bundle``, ``import_bundle``, ``open_verified_bundle``.

A MONAI bundle is code (``$`` expressions, ``_target_``, ``logging.conf``, pickled checkpoints), so a receiving site
verifies before it runs anything: safe zip entries, manifest hashes, metadata schema (offline, bundled schema),
weights with ``weights_only=True``, a static scan of every config (:mod:`pipeline.share_scan`), and only then is
``network_def`` instantiated (``verify_net_in_out``). See ``docs/sharing-bundles.md``.
"""

from __future__ import annotations

import logging

from pipeline.share.archive import ZipLimits as ZipLimits
from pipeline.share.archive import check_zip_entries as check_zip_entries
from pipeline.share.archive import safe_extract as safe_extract
from pipeline.share.files import MANIFEST as MANIFEST
from pipeline.share.files import PROVENANCE as PROVENANCE
from pipeline.share.files import SCHEMA_NAME, load_config, schema_path, sha256_file
from pipeline.share.files import SCHEMA_SHA256 as SCHEMA_SHA256
from pipeline.share.files import WEIGHT_SUFFIXES as WEIGHT_SUFFIXES
from pipeline.share.filetypes import data_file_reason as data_file_reason
from pipeline.share.filetypes import file_type_reason as file_type_reason
from pipeline.share.install import import_bundle, open_verified_bundle
from pipeline.share.logconf import scan_logging_conf as scan_logging_conf
from pipeline.share.pack import EXPORTS, PackResult, pack_bundle
from pipeline.share.pack import PACKED_DIRS as PACKED_DIRS
from pipeline.share.pack import PACKED_FILES as PACKED_FILES
from pipeline.share.provenance import PROVENANCE_FIELDS as PROVENANCE_FIELDS
from pipeline.share.provenance import PROVENANCE_INPUT as PROVENANCE_INPUT
from pipeline.share.provenance import build_provenance
from pipeline.share.report import FAIL as FAIL
from pipeline.share.report import PASS as PASS
from pipeline.share.report import SKIP as SKIP
from pipeline.share.report import TRUSTED as TRUSTED
from pipeline.share.report import WARN as WARN
from pipeline.share.report import BundleVerificationError, ShareError, VerifyItem, VerifyReport
from pipeline.share.scan import collect_imports as collect_imports
from pipeline.share.scan import find_absolute_paths as find_absolute_paths
from pipeline.share.scan import scan_config as scan_config
from pipeline.share.verify import verify_bundle, verify_dir
from pipeline.share.version import BUMPS, bump_version

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

logger = logging.getLogger(__name__)  # parent of the submodules' loggers

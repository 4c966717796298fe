"""Static safety scans for shared bundles: config code, ``logging.conf``, file types and zip entries.

Nothing here evaluates bundle content. ``$`` expressions are parsed with :mod:`ast`, ``_target_`` strings are
resolved only inside trusted namespaces (importing installed ``monai``/``torch``/``pipeline`` modules, never
bundle files), and zip archives are checked entry by entry before a single byte is written.
"""

from __future__ import annotations

from pipeline.share.archive import ZipLimits, check_zip_entries, safe_extract
from pipeline.share.filetypes import ALLOWED_PLAIN_NAMES as ALLOWED_PLAIN_NAMES
from pipeline.share.filetypes import ALLOWED_SUFFIXES as ALLOWED_SUFFIXES
from pipeline.share.filetypes import DATA_SUFFIXES as DATA_SUFFIXES
from pipeline.share.filetypes import data_file_reason, file_type_reason
from pipeline.share.logconf import scan_logging_conf
from pipeline.share.scan import (
    ALLOWED_EXPR_ROOTS,
    ALLOWED_TARGET_ROOTS,
    CodeItem,
    check_expression,
    check_target,
    collect_imports,
    find_absolute_paths,
    scan_config,
)
from pipeline.share.scan import DEFAULT_ALIASES as DEFAULT_ALIASES
from pipeline.share.scan import DENIED_NAMES as DENIED_NAMES
from pipeline.share.scan import DENIED_PREFIXES as DENIED_PREFIXES
from pipeline.share.scan import SAFE_BUILTINS as SAFE_BUILTINS

__all__ = [
    "ALLOWED_TARGET_ROOTS",
    "ALLOWED_EXPR_ROOTS",
    "CodeItem",
    "ZipLimits",
    "check_expression",
    "check_target",
    "collect_imports",
    "scan_config",
    "scan_logging_conf",
    "find_absolute_paths",
    "data_file_reason",
    "file_type_reason",
    "check_zip_entries",
    "safe_extract",
]

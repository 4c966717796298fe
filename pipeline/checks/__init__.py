"""Up-front validation of a dataset and a training configuration, so bad inputs fail in the first minute.

:func:`check_dataset` reports *every* problem of a dataset (never just the first), each naming the file, what was
expected, what was found and the fix. ``level="headers"`` reads image headers only (nibabel, no voxel data; gzip
truncation is detected from the gzip trailer); ``level="full"`` also loads every label (integer values in the
declared classes) and image (no NaN/Inf). :func:`check_training_data` is what the bundle's ``training`` run id calls
before the trainer starts; ``python -m pipeline check-data`` prints the same report. :func:`check_overrides` fails on
a misspelt command-line override (MONAI would silently add it as a new id). Messages and fixes:
``docs/troubleshooting.md``.
"""

from __future__ import annotations

from pipeline.checks.dataset import (
    KINDS,
    LEVELS,
    CheckReport,
    DataCheckError,
    check_dataset,
    check_output_dirs,
    check_patch_size,
    check_training_data,
    network_stride,
)
from pipeline.checks.images import ImageInfo, check_dicom_folder, read_image_info
from pipeline.checks.overrides import UnknownOverrideError, bundle_overrides, check_overrides, parse_set_options
from pipeline.data import Problem

__all__ = [
    "KINDS",
    "LEVELS",
    "CheckReport",
    "DataCheckError",
    "ImageInfo",
    "Problem",
    "UnknownOverrideError",
    "bundle_overrides",
    "check_dataset",
    "check_dicom_folder",
    "check_output_dirs",
    "check_overrides",
    "check_patch_size",
    "check_training_data",
    "network_stride",
    "parse_set_options",
    "read_image_info",
]

"""Encoding and atomic writing of batch-inference outputs.

NIfTI masks and probabilities are encoded as gzipped NIfTI-1 (affine as sform and qform, reproducible bytes);
:data:`MASK_FORMATS` maps ``mask_format`` to the mask's file ending. Every output is streamed to a hidden temp file in
its folder (:data:`TMP_MARK` in its name), then ``os.replace``-d into place, so a file that exists is complete; temp
files left by a run that was killed are removed by the next run. The engine is
:class:`pipeline.inference.engine.BatchInference`.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.utils.atomic import write_bytes

__all__ = ["MASK_FORMATS", "TMP_MARK"]

logger = logging.getLogger(__name__)

MASK_FORMATS = {"auto": "", "nifti": ".nii.gz", "png": ".png", "tiff": ".tif"}
TMP_MARK = ".partial-"


def _gzip_chunks(raw: bytes, level: int = 1, chunk: int = 1 << 22) -> Iterator[bytes]:
    comp = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container, header mtime 0 (reproducible bytes)
    view = memoryview(raw)
    for i in range(0, len(raw), chunk):
        yield comp.compress(view[i : i + chunk])
    yield comp.flush()


def nifti_chunks(array: np.ndarray, affine: np.ndarray) -> Iterator[bytes]:
    """``array`` as a gzipped NIfTI-1 with ``affine`` as sform and qform (code 1, scanner), in chunks."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    return _gzip_chunks(img.to_bytes())


def atomic_write_chunks(path: Path, chunks: Iterable[bytes]) -> Path:
    """:func:`pipeline.utils.atomic.write_bytes` with this module's temp marker, which ``remove_stale_temps`` finds."""
    return write_bytes(path, chunks, marker=TMP_MARK)


def remove_stale_temps(out: Path) -> None:
    for p in out.rglob(f".*{TMP_MARK}*"):
        if p.is_file():
            logger.info("removing %s left by an earlier run that was killed", p)
            p.unlink(missing_ok=True)

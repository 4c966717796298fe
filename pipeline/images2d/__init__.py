"""2D images of any size and channel count: reading, label masks (index or RGB-coded), transform chains, data checks.

- :mod:`~pipeline.images2d.files` — :class:`Image2DReader` (a MONAI ``ImageReader``: PNG/JPEG/BMP, TIFF, ``.npy``,
  2D NIfTI; 1..N channels; ``(H, W)`` order) and :func:`encode_mask_2d` (PNG/TIFF masks).
- :mod:`~pipeline.images2d.masks` — :class:`MaskToClassesd`: index masks pass, RGB-coded masks are mapped with
  ``label_colors`` (``{"0": [0, 0, 0], "1": [255, 0, 0]}``); an unknown colour is an error naming file and colour.
- :mod:`~pipeline.images2d.chains` — :func:`train_transforms_2d`, :func:`val_transforms_2d`,
  :func:`infer_transforms_2d` (what ``bundles/transfer_2d_segmentation`` wires).
- :mod:`~pipeline.images2d.checks` — :func:`check_dataset_2d`, :func:`check_training_data_2d`.
"""

from __future__ import annotations

from pipeline.images2d.chains import infer_transforms_2d, load_transforms_2d, train_transforms_2d, val_transforms_2d
from pipeline.images2d.checks import check_dataset_2d, check_training_data_2d
from pipeline.images2d.files import (
    IMAGE_SUFFIXES_2D,
    MASK_SUFFIXES_2D,
    Image2DReader,
    encode_mask_2d,
    read_image_2d,
)
from pipeline.images2d.masks import MaskToClassesd, label_channels, parse_label_colors

__all__ = [
    "IMAGE_SUFFIXES_2D",
    "MASK_SUFFIXES_2D",
    "Image2DReader",
    "MaskToClassesd",
    "check_dataset_2d",
    "check_training_data_2d",
    "encode_mask_2d",
    "infer_transforms_2d",
    "label_channels",
    "load_transforms_2d",
    "parse_label_colors",
    "read_image_2d",
    "train_transforms_2d",
    "val_transforms_2d",
]

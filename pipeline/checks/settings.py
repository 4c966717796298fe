"""Checks of bundle settings against the data and the machine: ``class_names`` vs ``dataset.json`` labels, 2D
``label_colors`` taken from ``dataset.json``, ``patch_size`` vs the network stride, writable output folders.
"""

from __future__ import annotations

import errno
import json
import tempfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.datalist import Problem, class_names_from_dataset
from pipeline.transforms.labels2d import label_colors_from_dataset

__all__ = [
    "check_output_dirs",
    "check_patch_size",
    "class_names_problem",
    "int_list",
    "label_colors_fallback",
    "network_stride",
]


def class_names_problem(
    dataset_dir: str | Path, class_names: Sequence[str], where: str = "class_names", bundle: str | Path | None = None
) -> Problem | None:
    """The ``class_names`` used differ from the dataset's ``dataset.json`` ``labels`` (count, or names compared
    case-insensitively in index order); None when they agree or the dataset declares no labels.

    Training with another dataset's classes runs, but names every output channel wrongly (and an extra class becomes
    a ratio-0 class that no patch can centre on), so this is an error whose fix is the dataset's own plan.
    """
    labels = class_names_from_dataset(dataset_dir)
    if not labels:
        return None
    wanted = [labels[k] for k in sorted(labels)]
    names = [str(n) for n in class_names]
    if [n.casefold() for n in names] == [n.casefold() for n in wanted]:
        return None
    json_path = Path(dataset_dir) / "dataset.json"
    plan = f"python -m pipeline plan {dataset_dir}" + (f" --bundle {bundle}" if bundle is not None else "")
    return Problem(
        "class_names",
        where,
        f"{len(names)} classes {names}, but {json_path} 'labels' declare {len(wanted)}: {wanted}; expected the "
        "same classes in the same order (names compared case-insensitively). Fix: plan the bundle for this dataset "
        f"({plan} --out plan.json, then train with --args_file plan.json), or pass --class_names "
        f"\"{wanted}\" (check-data/audit: --set 'class_names={json.dumps(wanted)}').",
    )


def label_colors_fallback(dataset_dir: str | Path, settings: MutableMapping[str, Any]) -> Problem | None:
    """2D settings without ``label_colors``: put the ``dataset.json`` ``label_colors`` into ``settings``.

    For the command-line tools (check-data, audit) reading a bundle whose ``label_colors`` is null: a dataset written
    with RGB-coded masks (``synth --dims 2 --label-format rgb``) declares its colours in ``dataset.json``. Training
    reads them only from the bundle, so the returned warning says how to pass them; None when nothing was taken.
    """
    if settings.get("spatial_dims") != 2 or settings.get("label_colors"):
        return None
    colours = label_colors_from_dataset(dataset_dir)
    if not colours:
        return None
    settings["label_colors"] = colours
    return Problem(
        "label_colors",
        str(Path(dataset_dir) / "dataset.json"),
        f"the bundle sets no label_colors; the masks were read with these dataset.json label_colors {colours}. "
        f"Training reads label_colors only from the bundle. Fix: pass --label_colors '{json.dumps(colours)}' to "
        "python -m monai.bundle run (or set label_colors in configs/train.json).",
        "warning",
    )


def network_stride(backbone: str = "resnet10") -> int:
    """Total downsampling of a FlexibleUNet encoder: input sizes must be multiples of it."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    entry = FLEXUNET_BACKBONE.register_dict.get(backbone)
    return 2 ** int(entry["feature_number"]) if entry else 32


def int_list(value: Any) -> list[int] | None:
    """``value`` as a list of positive ints (a list/tuple of them), else None."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return None
    ok = all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in value)
    return [int(n) for n in value] if ok else None


def check_patch_size(
    patch_size: Sequence[int] | int, spatial_dims: int = 3, backbone: str = "resnet10"
) -> list[Problem]:
    """``patch_size`` must have ``spatial_dims`` entries, each a multiple of the network stride.

    FlexibleUNet does not pad its input: a size that is not a multiple of the stride (32) fails inside the decoder
    with ``Sizes of tensors must match`` (measured with MONAI 1.6.1), so this is an error, not a warning.
    """
    if (size := int_list(patch_size)) is None:
        n = patch_size if isinstance(patch_size, int) and not isinstance(patch_size, bool) and patch_size > 0 else 96
        eg = json.dumps([n] * spatial_dims)
        msg = (
            f"must be a list of {spatial_dims} positive integers (one per spatial axis, spatial_dims={spatial_dims}), "
            f"got {patch_size!r}. Fix: e.g. --patch_size \"{eg}\" (check-data: --set 'patch_size={eg}')."
        )
        return [Problem("patch_stride", "patch_size", msg)]
    if len(size) != spatial_dims:
        msg = f"must have {spatial_dims} entries (spatial_dims), got {size}."
        return [Problem("patch_stride", "patch_size", msg)]
    stride = network_stride(backbone)
    bad = [i for i, n in enumerate(size) if int(n) % stride]
    if not bad:
        return []
    fixed = [max(stride, int(round(n / stride)) * stride) for n in size]
    return [
        Problem(
            "patch_stride",
            "patch_size",
            f"{size} is not a multiple of {stride} on axis {bad} ({backbone} FlexibleUNet downsamples by {stride} "
            f"and does not pad its input; it would fail with 'Sizes of tensors must match'). Fix: e.g. "
            f'--patch_size "{fixed}" (roi_size follows patch_size).',
        )
    ]


def check_output_dirs(dirs: Sequence[str | Path]) -> list[Problem]:
    """Each folder exists and is writable, or can be created (tested in its nearest existing parent; nothing is
    left behind)."""
    problems = []
    for d in dirs:
        existing = Path(d).absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        try:
            if not existing.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".write_test_"):
                pass
        except OSError as e:
            problems.append(
                Problem(
                    "output_not_writable",
                    str(d),
                    f"output folder is not writable ({type(e).__name__}: {e.strerror or e}); training writes "
                    "checkpoints and logs there. Fix: pass a writable --output_dir / --ckpt_dir / --bundle_root.",
                )
            )
    return problems

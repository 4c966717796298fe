"""Dataset checks (2D and 3D): every case's files, geometry, channels, labels and intensities; configuration checks.

:func:`check_dataset` reports *every* problem of a dataset (never just the first), each naming the file, what was
expected, what was found and the fix. ``spatial_dims`` picks the reader, as in the transform chains: 3D reads image
headers (nibabel, no voxel data; gzip truncation is detected from the gzip trailer) or DICOM series; 2D reads files
with the 2D chains' reader (PNG/JPEG/TIFF/``.npy``/NIfTI; pixels at both levels, 2D files are small) and maps RGB(A)
masks to classes with ``label_colors``. ``level="full"`` also checks label values (integers, declared classes; every
training label all background is an error, a declared class in no label a warning) and intensities (no NaN/Inf).
:func:`check_training_data` is what both bundles' ``training`` run calls (``data_check``) before the trainer starts;
``python -m pipeline check-data`` prints the same report. Messages and fixes: ``docs/troubleshooting.md``.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checks.images import CaseReader, ImageInfo, load_array
from pipeline.data.datalist import DatalistError, Problem, case_id, class_names_from_dataset, scan_datalist
from pipeline.transforms.labels2d import label_colors_from_dataset

__all__ = [
    "KINDS",
    "LEVELS",
    "CheckReport",
    "DataCheckError",
    "check_dataset",
    "check_output_dirs",
    "check_patch_size",
    "check_training_data",
    "class_names_problem",
    "label_colors_fallback",
    "network_stride",
]

logger = logging.getLogger(__name__)

LEVELS = ("headers", "full", "off")
KINDS = (
    "missing_file", "unreadable", "truncated", "shape_mismatch", "affine_mismatch", "label_values", "float_labels",
    "non_finite", "wrong_dims", "wrong_channels", "empty_dataset", "duplicate_case", "datalist", "dicom_mixed_series",
    "dicom_geometry", "small_image", "patch_stride", "output_not_writable", "label_colors", "class_names",
    "bad_spacing", "background_only", "absent_class",
)  # fmt: skip


class DataCheckError(DatalistError):
    """The dataset or configuration has problems; ``.problems`` lists them all (the message too)."""

    def __init__(self, report: CheckReport) -> None:
        self.report, self.problems = report, report.errors
        super().__init__(report.summary(max_lines=40))


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` found."""

    dataset_dir: str
    cases: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity != "error"]

    def summary(self, max_lines: int | None = None) -> str:
        """Header line plus one line per problem (errors first)."""
        ordered = self.errors + self.warnings
        head = (
            f"{len(self.errors)} error(s), {len(self.warnings)} warning(s) in {self.dataset_dir} "
            f"({self.cases} case(s) checked)"
        )
        lines = [f"  - [{p.severity}] {p}" for p in ordered[:max_lines]]
        if max_lines is not None and len(ordered) > max_lines:
            lines.append(f"  ... and {len(ordered) - max_lines} more: python -m pipeline check-data {self.dataset_dir}")
        return "\n".join([head + (":" if lines else "."), *lines])

    def raise_if_errors(self) -> CheckReport:
        if self.errors:
            raise DataCheckError(self)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "cases": self.cases,
            "problems": [
                {"kind": p.kind, "where": p.where, "message": p.message, "severity": p.severity} for p in self.problems
            ],
        }


# ------------------------------------------------------------------------------------------------ one case
def _dims_problem(info: ImageInfo, spatial_dims: int) -> Problem | None:
    nd = len(info.spatial_shape)
    if nd == spatial_dims:
        return None
    what = {2: "a 2D image", 3: "a 3D volume"}.get(nd, f"a {nd}D image")
    fix = "use the 2D bundle" if nd == 2 else "use the 3D bundle (or give 2D slices)"
    return Problem(
        "wrong_dims",
        info.path,
        f"is {what} (spatial shape {list(info.spatial_shape)}), but this bundle has spatial_dims={spatial_dims}. "
        f"Fix: {fix}, or set spatial_dims to match the data.",
    )


def _content(
    item: Mapping[str, str], declared: set[int] | None, arrays: Mapping[str, np.ndarray]
) -> tuple[list[Problem], set[int] | None]:
    """Intensities finite, labels integer and declared; ``arrays`` holds pixels already read (2D), else loaded.

    Returns ``(problems, label values found)``; the values are None without a label.
    """
    problems: list[Problem] = []
    image, label = item["image"], item.get("label")
    if not os.path.isdir(image):
        arr = arrays["image"] if "image" in arrays else load_array(image)
        if arr.dtype.kind in "fc":
            n_nan, n_inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
            if n_nan or n_inf:
                problems.append(
                    Problem(
                        "non_finite",
                        image,
                        f"{n_nan} NaN and {n_inf} Inf voxel(s); expected finite intensities (they turn the whole "
                        "normalised image and the loss into NaN). Fix: re-export the image, or replace them "
                        "(e.g. np.nan_to_num(x, nan=background)) and check the conversion tool.",
                    )
                )
    if label is None:
        return problems, None
    lab = arrays["label"] if "label" in arrays else load_array(label)
    if lab.dtype.kind in "fc":
        finite = np.isfinite(lab)
        frac = ~finite | (lab != np.rint(np.where(finite, lab, 0)))
        if frac.any():
            examples = sorted({float(v) for v in np.unique(lab[frac])[:5]})
            problems.append(
                Problem(
                    "float_labels",
                    label,
                    f"non-integer label values, e.g. {examples} ({int(frac.sum())} voxels); expected integer class "
                    "indices. Fix: the label was probably resampled with linear interpolation; redo it with nearest "
                    "neighbour, or re-save with np.rint(x).astype(np.uint8) if rounding is right.",
                )
            )
        lab = np.rint(np.where(finite, lab, 0))
    values = {int(v) for v in np.unique(lab)}
    if declared is not None and values - declared:
        bad = sorted(values - declared)
        colours = " For colour-coded 2D masks set label_colors." if "label" in arrays else ""
        problems.append(
            Problem(
                "label_values",
                label,
                f"label values {bad} are not declared classes {sorted(declared)} (class_names has {len(declared)} "
                f"entries). Fix: remap those values, or declare the classes (class_names / out_channels).{colours}",
            )
        )
    return problems, values


def _case(
    item: Mapping[str, str], reader: CaseReader, affine_tol: float
) -> tuple[list[Problem], ImageInfo | None, dict[str, np.ndarray]]:
    """Geometry problems of one case (files, dims, channels, shapes, affines); 2D also label channels/colours.

    Returns ``(problems, image geometry, pixels read)``; the pixels (2D: ``image (C, H, W)``, ``label`` class
    indices) spare :func:`_content` a second read.
    """
    problems: list[Problem] = []
    infos: dict[str, ImageInfo] = {}
    arrays: dict[str, np.ndarray] = {}
    for key in ("image", "label"):
        path = item.get(key)
        if path is None:
            continue
        found, info, arr = reader.read(path, key)
        problems += found
        if info is not None:
            infos[key] = info
        if arr is not None:
            arrays[key] = arr
    img, lab = infos.get("image"), infos.get("label")
    for info, role in ((img, "image"), (lab, "label")):
        if info is None:
            continue
        if (p := _dims_problem(info, reader.spatial_dims)) is not None:
            problems.append(p)
        if role == "label" and reader.spatial_dims == 2:
            continue  # channels of 2D masks (1, or those of label_colors; RGBA for RGB) are checked by the mapping
        want = reader.in_channels if role == "image" else 1
        if info.channels != want:
            fix = "Fix: set in_channels to match, or give" if role == "image" else "Fix: give"
            problems.append(
                Problem(
                    "wrong_channels",
                    info.path,
                    f"{role} has {info.channels} channel(s), expected {want}"
                    f"{' (in_channels)' if role == 'image' else ' (one label map)'}. {fix} {want}-channel files.",
                )
            )
    if img is not None and lab is not None:
        if img.spatial_shape != lab.spatial_shape:
            fix = (
                "pair the right files, or export the mask at the image's size (no resizing of masks with interpolation)"
                if reader.spatial_dims == 2
                else "resample the label onto the image grid (nearest neighbour) or pair the right files"
            )
            problems.append(
                Problem(
                    "shape_mismatch",
                    lab.path,
                    f"label shape {list(lab.spatial_shape)} differs from image {img.path} shape "
                    f"{list(img.spatial_shape)}; expected the same voxel grid. Fix: {fix}.",
                )
            )
        elif (
            reader.spatial_dims == 3  # 2D chains ignore affines (PNG/TIFF have none)
            and img.affine is not None
            and lab.affine is not None
            and img.affine.shape == lab.affine.shape
            and not np.allclose(img.affine, lab.affine, rtol=affine_tol, atol=affine_tol)
        ):
            diff = float(np.abs(img.affine - lab.affine).max())
            problems.append(
                Problem(
                    "affine_mismatch",
                    lab.path,
                    f"label affine differs from image {img.path} affine by up to {diff:.4g} (tolerance "
                    f"{affine_tol:g}); expected the same position/orientation/spacing, else image and label are "
                    "resampled apart. Fix: if they share the grid, copy the image affine into the label header; "
                    f"otherwise resample the label.\n      image {img.affine[:3].round(4).tolist()}\n      "
                    f"label {lab.affine[:3].round(4).tolist()}",
                )
            )
    if "label" in arrays and not problems:
        found, classes = reader.label_classes(arrays["label"], item["label"])
        problems += found
        arrays["label"] = classes if classes is not None else arrays["label"]
    return problems, img, arrays


# ------------------------------------------------------------------------------------------------ dataset
def _resampled_size(img: ImageInfo, pixdim: Sequence[float] | None) -> list[int]:
    """Voxels per axis after the transforms' RAS orientation (3D) and resampling to ``pixdim``."""
    shape, spacing = list(img.spatial_shape), list(img.spacing)
    if len(shape) == 3 and img.affine is not None and img.affine.shape == (4, 4):
        import nibabel as nib

        order = [int(a) for a in nib.orientations.io_orientation(img.affine)[:, 0]]
        if sorted(order) == [0, 1, 2]:  # voxel axis i becomes RAS axis order[i]
            shape, spacing = [shape[order.index(k)] for k in range(3)], [spacing[order.index(k)] for k in range(3)]
    target = list(pixdim) if pixdim is not None else spacing
    return [math.floor(n * s / t + 1e-6) for n, s, t in zip(shape, spacing, target, strict=False)]


def _datalist_path(dataset_dir: str | Path, datalist: str | Path | None) -> Path:
    return Path(datalist) if datalist is not None else Path(dataset_dir) / "dataset.json"


def _missing_training_section(
    dataset_dir: str | Path, sections: Sequence[str], datalist: str | Path | None
) -> Problem | None:
    """A ``dataset.json`` without a ``training`` section (when ``training`` is checked), naming the file."""
    path = _datalist_path(dataset_dir, datalist)
    if "training" not in sections or not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # reported by scan_datalist
    if not isinstance(meta, dict) or "training" in meta:
        return None
    return Problem(
        "datalist",
        f"{path}:training",
        f"{path} has no 'training' section (it has {sorted(meta)}); expected a list of {{\"image\": ..., "
        '"label": ...} entries to train on. Fix: add a "training" list to dataset.json (a section named otherwise, '
        'e.g. "train", must be renamed), or remove dataset.json to pair imagesTr/ with labelsTr/ by file name.',
    )


def _class_presence(
    dataset_dir: str | Path,
    label_values: Sequence[tuple[str, set[int]]],
    names: Sequence[str] | None,
    datalist: str | Path | None,
) -> list[Problem]:
    """Every ``training`` label all background (an error); a declared class in no label read (a warning)."""
    training = [v for s, v in label_values if s == "training"]
    where = str(_datalist_path(dataset_dir, datalist))
    where = f"{where}:training" if Path(where).is_file() else str(Path(dataset_dir) / "labelsTr")
    if training and all(v <= {0} for v in training):
        return [
            Problem(
                "background_only",
                where,
                f"all {len(training)} training label(s) read are background only (every voxel 0); expected "
                "foreground classes in at least some of them, else the network learns to predict background "
                "everywhere. Fix: check that the labels were exported with their structures (not empty masks) "
                "and that the datalist pairs each image with its own label.",
            )
        ]
    if names is None or not label_values:
        return []
    seen = set().union(*(v for _, v in label_values))
    return [
        Problem(
            "absent_class",
            f"class {k} {names[k]!r}",
            f"declared (class_names / dataset.json labels) but present in none of the {len(label_values)} label(s) "
            "read; the network gets no example of it and its Dice stays 0. Fix: add cases that contain it, or "
            "drop the class (class_names, out_channels and dataset.json labels) if it is not in this dataset.",
            "warning",
        )
        for k in range(1, len(names))
        if k not in seen
    ]


def check_dataset(
    dataset_dir: str | Path,
    spatial_dims: int = 3,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    level: str = "full",
    sections: Sequence[str] = ("training", "validation"),
    affine_tol: float = 1e-3,
    datalist: str | Path | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> CheckReport:
    """Check every case of a 2D or 3D dataset and report all problems.

    Per case: files readable, ``spatial_dims`` spatial axes, ``in_channels`` image channels, a one-channel label
    (2D: or an RGB(A) mask whose colours are all in ``label_colors``), image and label on the same grid (3D: same
    affine); with ``level="full"`` also finite intensities and integer label values that are declared classes, not
    all background in every ``training`` label (an error), and every declared class in some label (else a warning).
    A ``dataset.json`` without a ``training`` section is named. Cases smaller than ``patch_size`` after resampling
    get a warning (they are zero-padded).

    Args:
        dataset_dir: MSD-style dataset folder (``dataset.json``, or ``imagesTr/`` + ``labelsTr/``).
        spatial_dims: 2 or 3 (the bundle's ``spatial_dims``); picks the reader, as the transform chains do.
        in_channels: image channels the network expects.
        class_names: declared classes, background first (label values must be ``0..len-1``); None: the dataset's
            ``dataset.json`` ``labels``, else values are not checked.
        patch_size: training patch size; cases smaller than it after resampling get a warning (they are padded).
        pixdim: target spacing of the transforms (for the patch-size warning); None = native grid.
        level: ``headers`` (3D: no voxel data read), ``full`` (also label values, NaN/Inf intensities) or ``off``.
        sections: datalist sections to check.
        affine_tol: allowed relative/absolute difference between image and label affines (3D).
        datalist: explicit ``dataset.json``.
        label_colors, channel_dim, color_tolerance: 2D only, as in :func:`pipeline.transforms.chains.train_transforms`.
    """
    if level not in LEVELS:
        raise ValueError(f"'level' must be one of {list(LEVELS)}, got {level!r}.")
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")
    if spatial_dims == 3 and label_colors:
        raise ValueError(
            f"'label_colors' maps RGB(A)-coded 2D masks, but spatial_dims=3, got label_colors={label_colors!r}. "
            "Fix: set label_colors to null for 3D label maps, or spatial_dims=2 for 2D images."
        )
    report = CheckReport(str(dataset_dir))
    if level == "off":
        return report
    lists, report.problems = scan_datalist(dataset_dir, sections, datalist)
    if (missing := _missing_training_section(dataset_dir, sections, datalist)) is not None:
        report.problems = [p for p in report.problems if p.kind != "empty_dataset"] + [missing]
    items = [(s, it) for s in sections for it in lists.get(s, [])]
    report.cases = len(items)
    names = list(class_names) if class_names is not None else None
    if names is not None and (mismatch := class_names_problem(dataset_dir, names)) is not None:
        report.problems.append(mismatch)
    if names is None and (from_json := class_names_from_dataset(dataset_dir)) is not None:
        names = [from_json[k] for k in sorted(from_json)]
    declared = set(range(len(names))) if names is not None else None
    reader = CaseReader(spatial_dims, in_channels, label_colors, channel_dim, color_tolerance, len(names or []) or None)
    small: list[tuple[str, list[int]]] = []
    patch = _int_list(patch_size) if patch_size is not None else None  # malformed: check_patch_size says so
    label_values: list[tuple[str, set[int]]] = []  # (section, values) of every label read (level "full")
    for section, item in items:
        problems, img, arrays = _case(item, reader, affine_tol)
        report.problems += problems
        if level == "full" and not problems:
            try:
                found, values = _content(item, declared, arrays)
            except Exception as e:  # a file that passed the header check but fails to decode
                report.problems.append(Problem("unreadable", item["image"], f"cannot read voxel data: {e}."))
            else:
                report.problems += found
                if values is not None:
                    label_values.append((section, values))
        if img is not None and patch is not None and len(patch) == len(img.spatial_shape):
            size = _resampled_size(img, pixdim)
            if any(n < p for n, p in zip(size, patch, strict=True)):
                small.append((case_id(item["image"]), size))
    if not any(p.kind == "label_values" for p in report.problems):  # undeclared values: remapping comes first
        report.problems += _class_presence(dataset_dir, label_values, names, datalist)
    if small:
        eg = ", ".join(f"{c} {s}" for c, s in small[:3])
        order = " (RAS order, before foreground cropping" if spatial_dims == 3 else " (rows, columns"
        report.problems.append(
            Problem(
                "small_image",
                "patch_size",
                f"{len(small)} of {len(items)} case(s) are smaller than patch_size {patch} after "
                f"resampling to pixdim {list(pixdim) if pixdim is not None else 'native'}{order}; e.g. {eg}); they "
                "are zero-padded to the patch (SpatialPadd), which works. Fix if unintended: a smaller patch_size or "
                "a finer pixdim.",
                "warning",
            )
        )
    return report


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


def _int_list(value: Any) -> list[int] | None:
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
    if (size := _int_list(patch_size)) is None:
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


def check_training_data(
    dataset_dir: str | Path,
    spatial_dims: int = 3,
    in_channels: int = 1,
    class_names: Sequence[str] | None = None,
    patch_size: Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    backbone: str = "resnet10",
    level: str = "full",
    output_dirs: Sequence[str | Path] = (),
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int = "auto",
    color_tolerance: float = 0,
) -> CheckReport:
    """Everything a bundle's ``training`` run checks before the trainer starts (``data_check``); raises on any error.

    Header problems (missing/corrupt/truncated files, shapes, affines, dims, channels, duplicates; 2D also mask
    colours), configuration problems (patch size vs network stride, unwritable outputs) and, with ``level="full"``,
    label values and NaN/Inf intensities. Warnings are logged. Arguments as :func:`check_dataset`.

    Raises:
        DataCheckError: listing every error (naming each file or key); under ``python -m monai.bundle run`` it is
            logged and the run exits with code 1.
    """
    report = CheckReport(str(dataset_dir))
    if patch_size is not None:
        report.problems += check_patch_size(patch_size, spatial_dims, backbone)
    report.problems += check_output_dirs(output_dirs)
    if level != "off":
        # 3D: headers first (no voxel data), voxels only when they are sound; 2D files are read whole: one pass
        first = level if spatial_dims == 2 else "headers"
        common: dict[str, Any] = {"label_colors": label_colors, "channel_dim": channel_dim}
        common["color_tolerance"] = color_tolerance
        args = (dataset_dir, spatial_dims, in_channels, class_names)
        headers = check_dataset(*args, patch_size, pixdim, first, **common)
        report.problems += headers.problems
        report.cases = headers.cases
        if level == "full" and first != "full" and not report.errors:
            full = check_dataset(*args, None, None, "full", **common)
            report.problems += [p for p in full.problems if p not in report.problems]
    for p in report.warnings:
        logger.warning("data check: %s", p)
    if report.errors:
        raise DataCheckError(report)
    logger.info("data check (%s): %d case(s) in %s passed.", level, report.cases, dataset_dir)
    return report

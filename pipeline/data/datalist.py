"""Datalists: MSD-style ``dataset.json`` or ``imagesTr/`` + ``labelsTr/`` folder pairing.

A datalist is a list of dicts ``{"image": abs path, "label": abs path}`` as MONAI's dictionary transforms
expect. Paths in ``dataset.json`` are resolved against the dataset folder. Every problem raises
:class:`DatalistError` naming the file or entry, what was expected and how to fix it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CASE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "DatalistError",
    "Problem",
    "case_id",
    "class_names_from_dataset",
    "load_datalist",
    "list_images",
    "load_split",
    "pair_folders",
    "scan_datalist",
    "split_datalist",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".npy")
#: every suffix a case file may have (images, 2D images, masks, arrays, single DICOM files), longest first
CASE_SUFFIXES: tuple[str, ...] = (*IMAGE_SUFFIXES, ".jpeg", ".jpg", ".bmp", ".npz", ".dcm")
_SECTIONS = ("training", "validation", "test")


class DatalistError(ValueError):
    """A datalist problem: a missing file, an unpaired case or a malformed ``dataset.json``."""


@dataclass(frozen=True)
class Problem:
    """One problem found in a dataset or a configuration (see :mod:`pipeline.checks` for the ``kind`` values).

    Attributes:
        kind: short machine-readable name, e.g. ``missing_file``, ``shape_mismatch``.
        where: the file, folder or config key concerned.
        message: what is wrong, what was expected, what was found and how to fix it.
        severity: ``error`` (training would fail or learn garbage) or ``warning`` (it works, but look).
    """

    kind: str
    where: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def case_id(path: str | Path, postfix: str = "", channel_suffix: bool = True) -> str:
    """The one case id of an image, label or prediction file: its name without the image suffix (any of
    :data:`CASE_SUFFIXES`), without ``_<postfix>`` (e.g. ``seg`` for predictions) and, with ``channel_suffix``,
    without an nnU-Net channel suffix ``_0000``.

    Args:
        path: the file (or DICOM series folder).
        postfix: a postfix the writer added, e.g. ``"seg"`` for ``case_seg.nii.gz``.
        channel_suffix: strip a trailing ``_NNNN`` (nnU-Net channel files in ``imagesTr``); False where names carry
            no channel suffix and ``_0001`` is part of the name (predictions, evaluated images).

    >>> case_id("/data/imagesTr/liver_003_0000.nii.gz")
    'liver_003'
    >>> case_id("pred/case_0001_seg.nii.gz", postfix="seg", channel_suffix=False)
    'case_0001'
    """
    name = Path(str(path).rstrip("/\\")).name
    for suffix in CASE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if postfix and name.endswith(f"_{postfix}"):
        name = name[: -len(postfix) - 1]
    if channel_suffix and len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
    )


def list_images(folder: str | Path, recursive: bool = True) -> list[dict[str, str]]:
    """Every image file under ``folder`` (sorted, hidden files skipped) as ``[{"image": abs path}]``.

    Raises:
        DatalistError: the folder does not exist or holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatalistError(f"Input folder {str(root)!r} does not exist; expected a folder of image files.")
    files = root.rglob("*") if recursive else root.iterdir()
    found = sorted(
        p
        for p in files
        if p.is_file()
        and p.name.lower().endswith(IMAGE_SUFFIXES)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not found:
        raise DatalistError(f"Input folder {str(root)!r} holds no image files ending in {list(IMAGE_SUFFIXES)}.")
    return [{"image": str(p.resolve())} for p in found]


def pair_folders(image_dir: str | Path, label_dir: str | Path | None = None) -> list[dict[str, str]]:
    """Pair image and label files by case id.

    Args:
        image_dir: folder of images (e.g. ``imagesTr``).
        label_dir: folder of labels (e.g. ``labelsTr``); None lists images only.

    Raises:
        DatalistError: a folder is missing or empty, a case id is duplicated, or a case has no partner.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise DatalistError(f"Image folder {str(image_dir)!r} does not exist; expected a folder of image files.")
    images = _image_files(image_dir)
    if not images:
        raise DatalistError(
            f"Image folder {str(image_dir)!r} holds no image files; expected files ending in {list(IMAGE_SUFFIXES)}."
        )
    by_id: dict[str, Path] = {}
    for p in images:
        cid = case_id(p)
        if cid in by_id:
            raise DatalistError(f"Duplicate case id {cid!r} in {str(image_dir)!r}: {by_id[cid].name} and {p.name}.")
        by_id[cid] = p
    if label_dir is None:
        return [{"image": str(p.resolve())} for p in by_id.values()]
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise DatalistError(f"Label folder {str(label_dir)!r} does not exist; expected one label file per image.")
    labels = {case_id(p): p for p in _image_files(label_dir)}
    no_label = sorted(set(by_id) - set(labels))
    no_image = sorted(set(labels) - set(by_id))
    if no_label or no_image:
        raise DatalistError(
            f"Unpaired cases between {str(image_dir)!r} and {str(label_dir)!r}: "
            f"images without label {no_label[:10]}, labels without image {no_image[:10]}. "
            "Name each label like its image (case id = file name without extension and without '_0000')."
        )
    return [{"image": str(by_id[c].resolve()), "label": str(labels[c].resolve())} for c in sorted(by_id)]


def _resolve_item(item: Any, base: Path, where: str, require_label: bool) -> dict[str, str]:
    if isinstance(item, str):
        item = {"image": item}
    if not isinstance(item, dict) or "image" not in item:
        raise DatalistError(f"{where}: expected an object with an 'image' path, got {item!r}.")
    out: dict[str, str] = {}
    for key, value in item.items():
        if key in ("image", "label") and isinstance(value, str):
            path = Path(value) if Path(value).is_absolute() else (base / value)
            if not path.exists():
                raise DatalistError(
                    f"{where}: {key} file {str(path)!r} does not exist. Fix the path in dataset.json "
                    "(relative paths are resolved against the dataset folder)."
                )
            out[key] = str(path.resolve())
        else:
            out[key] = value
    if require_label and "label" not in out:
        raise DatalistError(f"{where}: no 'label' path; training and validation entries need one.")
    return out


def load_datalist(
    dataset_dir: str | Path, section: str = "training", datalist: str | Path | None = None
) -> list[dict[str, str]]:
    """Load one section of a dataset.

    Args:
        dataset_dir: dataset folder; relative paths are resolved against it.
        section: ``training``, ``validation`` or ``test``.
        datalist: a ``dataset.json``; defaults to ``dataset_dir/dataset.json`` if present, else the folders
            ``imagesTr``/``labelsTr`` (``imagesTs``/``labelsTs`` for ``test``) are paired.

    Returns:
        list of ``{"image": abs path, "label": abs path, ...}``; test entries may lack ``label``.
    """
    if section not in _SECTIONS:
        raise DatalistError(f"'section' must be one of {list(_SECTIONS)}, got {section!r}.")
    base = Path(dataset_dir)
    if not base.is_dir():
        raise DatalistError(f"Dataset folder {str(base)!r} does not exist; pass --dataset_dir with your data.")
    json_path = Path(datalist) if datalist is not None else base / "dataset.json"
    if json_path.is_file():
        try:
            meta = json.loads(json_path.read_text())
        except json.JSONDecodeError as e:
            raise DatalistError(f"{str(json_path)!r} is not valid JSON: {e}.") from e
        if section not in meta:
            if section == "validation":
                return []
            present = [s for s in _SECTIONS if s in meta]
            raise DatalistError(f"{str(json_path)!r} has no {section!r} section; it has {present}.")
        items = meta[section]
        if not isinstance(items, list):
            raise DatalistError(f"{str(json_path)!r}: {section!r} must be a list, got {type(items).__name__}.")
        out = [
            _resolve_item(it, base, f"{json_path}:{section}[{i}]", require_label=section != "test")
            for i, it in enumerate(items)
        ]
        ids = [case_id(it["image"]) for it in out]
        dup = sorted({c for c in ids if ids.count(c) > 1})
        if dup:
            raise DatalistError(f"{str(json_path)!r}: duplicate case ids in {section!r}: {dup}.")
        return out
    if datalist is not None:
        raise DatalistError(f"Datalist {str(json_path)!r} does not exist.")
    if section == "validation":
        return []
    sub = "Ts" if section == "test" else "Tr"
    if not (base / f"images{sub}").is_dir():
        raise DatalistError(_no_datalist_message(base, f"images{sub}"))
    label_dir = base / f"labels{sub}"
    if section == "test" and not label_dir.is_dir():
        return pair_folders(base / f"images{sub}")
    return pair_folders(base / f"images{sub}", label_dir)


def split_datalist(
    items: Sequence[dict[str, Any]], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic train/validation split (at least one case each when there are two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise DatalistError(f"'val_fraction' must be in (0, 1), got {val_fraction!r}.")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(items) * val_fraction)), len(items) - 1) if len(items) > 1 else 0
    val_idx = set(order[:n_val])
    return [it for i, it in enumerate(items) if i not in val_idx], [items[i] for i in sorted(val_idx)]


def load_split(
    dataset_dir: str | Path,
    split: str = "training",
    val_fraction: float = 0.2,
    seed: int = 0,
    datalist: str | Path | None = None,
) -> list[dict[str, str]]:
    """The ``training``, ``validation`` or ``test`` cases, for bundles.

    Uses the dataset's ``validation`` section when it has one; otherwise holds out ``val_fraction`` of
    ``training`` deterministically (by ``seed``), so the two calls of a bundle never overlap.
    """
    if split == "test":
        return load_datalist(dataset_dir, "test", datalist)
    training = load_datalist(dataset_dir, "training", datalist)
    validation = load_datalist(dataset_dir, "validation", datalist)
    if not validation:
        training, validation = split_datalist(training, val_fraction, seed)
        logger.info(
            "no validation section: held out %d of %d training cases", len(validation), len(training) + len(validation)
        )
    if split == "training":
        if not training:
            raise DatalistError(f"No training cases found in {str(dataset_dir)!r}.")
        return training
    if split == "validation":
        return validation
    raise DatalistError(f"'split' must be 'training', 'validation' or 'test', got {split!r}.")


def class_names_from_dataset(dataset_dir: str | Path) -> dict[int, str] | None:
    """``labels`` of a dataset's ``dataset.json`` as ``{index: name}``, or None when there is none."""
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return None
    labels = json.loads(path.read_text()).get("labels")
    if not isinstance(labels, dict):
        return None
    return {int(k): str(v) for k, v in labels.items()}


def _no_datalist_message(base: Path, images: str = "imagesTr") -> str:
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in base.iterdir())[:8]
    return (
        f"Dataset folder {str(base)!r} holds neither a dataset.json nor an {images}/ folder "
        f"(found {found or 'nothing'}). "
        f"Expected an MSD-style dataset: dataset.json with 'training'/'validation'/'test' lists, or {images}/ + "
        f"labels{images[-2:]}/ with matching file names. Fix: point --dataset_dir at such a folder."
    )


def _scan_json(
    json_path: Path, base: Path, sections: Sequence[str]
) -> tuple[dict[str, list[dict[str, str]]], list[Problem]]:
    problems: list[Problem] = []
    out: dict[str, list[dict[str, str]]] = {s: [] for s in sections}
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return out, [Problem("datalist", str(json_path), f"not a readable JSON file ({e}). Fix the file.")]
    if not isinstance(meta, dict):
        return out, [Problem("datalist", str(json_path), f"expected a JSON object, got {type(meta).__name__}.")]
    for section in sections:
        items = meta.get(section, [])
        if not isinstance(items, list):
            problems.append(
                Problem("datalist", f"{json_path}:{section}", f"must be a list, got {type(items).__name__}.")
            )
            continue
        for i, item in enumerate(items):
            where = f"{json_path}:{section}[{i}]"
            if isinstance(item, str):
                item = {"image": item}
            if not isinstance(item, dict) or not isinstance(item.get("image"), str):
                problems.append(Problem("datalist", where, f"expected an object with an 'image' path, got {item!r}."))
                continue
            if section != "test" and not isinstance(item.get("label"), str):
                msg = "no 'label' path; training and validation entries need one."
                problems.append(Problem("datalist", where, msg))
                continue
            resolved, ok = dict(item), True
            for key in ("image", "label"):
                if isinstance(item.get(key), str):
                    path = Path(item[key]) if Path(item[key]).is_absolute() else base / item[key]
                    if not path.exists():
                        ok = False
                        problems.append(
                            Problem(
                                "missing_file",
                                str(path),
                                f"{key} file of {where} does not exist. Fix the path in dataset.json (relative paths "
                                "are resolved against the dataset folder) or restore the file.",
                            )
                        )
                    resolved[key] = str(path.resolve())
            if ok:
                out[section].append(resolved)
    return out, problems


def _scan_folders(base: Path) -> tuple[list[dict[str, str]], list[Problem]]:
    image_dir, label_dir = base / "imagesTr", base / "labelsTr"
    if not image_dir.is_dir():
        return [], [Problem("empty_dataset", str(base), _no_datalist_message(base))]
    problems: list[Problem] = []
    images: dict[str, Path] = {}
    for p in _image_files(image_dir):
        cid = case_id(p)
        if cid in images:
            problems.append(
                Problem(
                    "duplicate_case",
                    str(p),
                    f"case id {cid!r} also belongs to {images[cid].name}; each case needs one image file. Fix: "
                    "remove or rename one of them.",
                )
            )
            continue
        images[cid] = p
    if not images:
        problems.append(
            Problem("empty_dataset", str(image_dir), f"holds no image files ending in {list(IMAGE_SUFFIXES)}.")
        )
        return [], problems
    labels = {case_id(p): p for p in _image_files(label_dir)} if label_dir.is_dir() else {}
    for cid in sorted(set(images) - set(labels)):
        problems.append(
            Problem(
                "missing_file",
                str(images[cid]),
                f"no label for case {cid!r} in {label_dir}; expected {label_dir / (cid + '.nii.gz')} (same case id). "
                "Fix: add the label or remove the image.",
            )
        )
    for cid in sorted(set(labels) - set(images)):
        problems.append(
            Problem("missing_file", str(labels[cid]), f"label of case {cid!r} has no image in {image_dir}.")
        )
    paired = sorted(set(images) & set(labels))
    return [{"image": str(images[c].resolve()), "label": str(labels[c].resolve())} for c in paired], problems


def scan_datalist(
    dataset_dir: str | Path,
    sections: Sequence[str] = ("training", "validation"),
    datalist: str | Path | None = None,
) -> tuple[dict[str, list[dict[str, str]]], list[Problem]]:
    """Like :func:`load_datalist` over several sections, but collects every problem instead of raising at the first.

    Entries with a missing file are left out of the returned lists (and reported); duplicate case ids within and
    across sections, unpaired files and an empty dataset are reported too.

    Args:
        dataset_dir: dataset folder.
        sections: sections to read (``training``, ``validation``, ``test``).
        datalist: a ``dataset.json``; default ``dataset_dir/dataset.json``, else ``imagesTr``/``labelsTr`` pairing
            (which has only a ``training`` section).

    Returns:
        ``({section: [{"image": abs path, "label": abs path}, ...]}, problems)``.
    """
    for section in sections:
        if section not in _SECTIONS:
            raise DatalistError(f"'sections' entries must be in {list(_SECTIONS)}, got {section!r}.")
    base = Path(dataset_dir)
    out: dict[str, list[dict[str, str]]] = {s: [] for s in sections}
    if not base.is_dir():
        msg = "dataset folder does not exist; expected an MSD-style folder. Fix the path (--dataset_dir)."
        return out, [Problem("missing_file", str(base), msg)]
    json_path = Path(datalist) if datalist is not None else base / "dataset.json"
    if json_path.is_file():
        out, problems = _scan_json(json_path, base, sections)
    elif datalist is not None:
        return out, [Problem("missing_file", str(json_path), "datalist file does not exist.")]
    elif "training" in sections:
        out["training"], problems = _scan_folders(base)
    else:
        problems = []
    seen: dict[str, str] = {}
    for section in sections:
        for item in out[section]:
            cid = case_id(item["image"])
            if cid in seen:
                problems.append(
                    Problem(
                        "duplicate_case",
                        item["image"],
                        f"case id {cid!r} appears twice ({seen[cid]} and {section}); a case must be listed once, "
                        "or validation leaks into training. Fix: remove the repeated entry or rename the case.",
                    )
                )
            seen.setdefault(cid, section)
    if "training" in sections and not out["training"] and not any(p.kind == "empty_dataset" for p in problems):
        problems.append(Problem("empty_dataset", str(base), "no usable training cases were found."))
    return out, problems

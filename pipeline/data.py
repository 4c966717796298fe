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
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_SUFFIXES",
    "DatalistError",
    "case_id",
    "class_names_from_dataset",
    "load_datalist",
    "list_images",
    "load_split",
    "pair_folders",
    "split_datalist",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".npy")
_SECTIONS = ("training", "validation", "test")


class DatalistError(ValueError):
    """A datalist problem: a missing file, an unpaired case or a malformed ``dataset.json``."""


def case_id(path: str | Path) -> str:
    """Case id of an image or label file: its name without image suffixes and without an nnU-Net ``_0000``.

    >>> case_id("/data/imagesTr/liver_003_0000.nii.gz")
    'liver_003'
    """
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if len(name) > 5 and name[-5] == "_" and name[-4:].isdigit():
        name = name[:-5]
    return name


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)
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
        p for p in files
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not any(part.startswith(".") for part in p.parts)
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
        logger.info("no validation section: held out %d of %d training cases", len(validation), len(training) + len(validation))
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

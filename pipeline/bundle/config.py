"""Open a bundle: the one ``ConfigParser`` set-up, its class names and its files.

Every tool that reads a bundle outside ``python -m monai.bundle run`` (check-data, audit, evaluate, infer, overfit,
the benchmarks) goes through :func:`open_bundle`, so they all see the bundle as MONAI's runner does: the same config
files merged in order, ``metadata.json`` under ``_meta_``, ``bundle_root`` set to the folder, then the overrides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = [
    "BUNDLE_2D",
    "BUNDLE_3D",
    "BundleError",
    "bundle_class_names",
    "config_path",
    "default_bundle",
    "get_parsed",
    "open_bundle",
]

_ROOT = Path(__file__).resolve().parents[2]
#: the bundles of a source checkout (``bundles/`` beside ``pipeline/``)
BUNDLE_3D = _ROOT / "bundles" / "transfer_3d_segmentation"
BUNDLE_2D = _ROOT / "bundles" / "transfer_2d_segmentation"
_CHANNEL_DEF = ("network_data_format", "outputs", "pred", "channel_def")


class BundleError(ValueError):
    """A bundle folder, config file or config id is missing or cannot be evaluated; the message names it."""


def default_bundle(spatial_dims: int) -> Path:
    """The checkout's 3D or 2D bundle folder."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")
    return BUNDLE_3D if spatial_dims == 3 else BUNDLE_2D


def config_path(bundle: str | Path, name: str) -> Path:
    """``<bundle>/configs/<name>``, or a :class:`BundleError` naming the missing file."""
    path = Path(bundle) / "configs" / name
    if not path.is_file():
        raise BundleError(f"{path} not found; expected a MONAI bundle folder holding configs/{name}.")
    return path


def open_bundle(
    bundle: str | Path,
    config_files: str | Sequence[str] = ("train.json",),
    overrides: Mapping[str, Any] | None = None,
    dataset_dir: str | Path | None = None,
) -> ConfigParser:
    """A ``ConfigParser`` over ``configs/<config_files>`` (merged in order) and ``configs/metadata.json``.

    Args:
        bundle: bundle folder (``configs/`` inside).
        config_files: file names under ``configs/``, e.g. ``("train.json", "finetune.json")``.
        overrides: ids to set after reading, ``#`` for nesting (``{"train#preprocessing#augment": False}``).
        dataset_dir: sets ``dataset_dir`` when given.

    Raises:
        BundleError: a config file or ``metadata.json`` is missing.
    """
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    paths = [config_path(bundle, f) for f in files]
    parser = ConfigParser()
    parser.read_config([str(p) for p in paths])
    parser.read_meta(str(config_path(bundle, "metadata.json")))
    parser["bundle_root"] = str(bundle)
    if dataset_dir is not None:
        parser["dataset_dir"] = str(dataset_dir)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def get_parsed(parser: ConfigParser, key: str, default: Any = KeyError) -> Any:
    """``parser.get_parsed_content(key)`` with a :class:`BundleError` naming the id (and ``default`` when absent)."""
    if key not in parser:
        if default is KeyError:
            raise BundleError(f"the bundle config defines no {key!r}.")
        return default
    try:
        return parser.get_parsed_content(key)
    except Exception as e:
        raise BundleError(f"cannot evaluate the bundle id {key!r}: {type(e).__name__}: {e}") from e


def bundle_class_names(bundle: str | Path) -> dict[int, str]:
    """``{index: name}`` from ``configs/metadata.json`` ``network_data_format.outputs.pred.channel_def``.

    Raises:
        BundleError: no metadata or no ``channel_def`` (the message shows the expected form).
    """
    path = config_path(bundle, "metadata.json")
    try:
        node: Any = json.loads(path.read_text())
        for part in _CHANNEL_DEF:
            node = node[part]
        return {int(k): str(v) for k, v in dict(node).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(
            f"{path}: expected network_data_format.outputs.pred.channel_def like {{'0': 'background', '1': 'organ'}}; "
            f"got error {e!r}."
        ) from e

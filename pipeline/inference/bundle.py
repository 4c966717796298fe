"""Batch inference from a bundle: :func:`from_bundle`, the one way to build the engine a bundle's ``inferring`` runs.

``python -m pipeline infer``, the ``infer_path`` benchmark and ``python -m monai.bundle run inferring`` all get their
:class:`~pipeline.inference.engine.BatchInference` by evaluating the same config id, :data:`ENGINE_ID`
(``batch_inference``), of the same parser (:func:`pipeline.bundle.config.open_bundle`: the config files merged in order,
``metadata.json`` under ``_meta_``, ``bundle_root`` set). Its ``preprocessing``, ``inferer``, ``channel_dim``,
``mask_format``, ... are the bundle's, so every route writes the same masks; settings are changed with bundle ids
(``sw_batch_size``, ``device``, ``mask_format``, ...) exactly as ``--<id> <value>`` changes them for ``monai.bundle``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from pipeline.bundle.config import BundleError, open_bundle
from pipeline.inference.engine import BatchInference
from pipeline.share.trust import check_bundle_folder

__all__ = ["ENGINE_ID", "INIT_ID", "RUN_ID", "from_bundle"]

logger = logging.getLogger(__name__)

#: the config id of the bundle's :class:`BatchInference`; the ``inferring`` run id calls ``@batch_inference.run(...)``
ENGINE_ID = "batch_inference"
#: the run id ``python -m monai.bundle run`` takes for batch inference
RUN_ID = "inferring"
#: expressions ``monai.bundle run`` evaluates before any run id (``set_determinism``); :func:`from_bundle` does too
INIT_ID = "initialize"
_CHANNEL_DEF = "_meta_#network_data_format#outputs#pred#channel_def"
_MONAI_WRAPPERS = ("Failed to instantiate component", "Failed to evaluate")
_EXAMPLE = "bundles/transfer_3d_segmentation/configs/inference.json"


def from_bundle(
    bundle: str | Path,
    checkpoint: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_files: str | Sequence[str] = ("inference.json",),
    *,
    trust_unverified: bool = False,
    trusted_keys: str | os.PathLike | None = None,
    allow_unsigned: bool = False,
    trust: Sequence[str] = (),
) -> BatchInference:
    """The bundle's own :class:`BatchInference`: its config id ``batch_inference``, as ``inferring`` builds it.

    The bundle's ``initialize`` expressions run first (as under ``monai.bundle run``), then ``batch_inference`` is
    instantiated: network, weights (``torch.load(weights_only=True)``), ``preprocessing``, ``inferer``, ``device``,
    ``mask_format``, ... all from the config. The engine's ``run(input_dir, output_dir)`` is what ``inferring`` calls
    with ``@dataset_dir, @output_dir``.

    Args:
        bundle: bundle folder (``configs/`` inside).
        checkpoint: weights file; sets the id ``ckpt_path`` (default ``<bundle>/models/model.pt``).
        overrides: bundle ids to set before building, ``#`` for nesting, values as in the config (a string starting
            with ``$`` is an expression), e.g. ``{"sw_batch_size": 4, "device": "cpu", "mask_format": "tiff"}``.
            Each id must exist in the config.
        config_files: file names under ``configs/``, merged in order.
        trust_unverified: run the folder's configs without the check below (logged as a WARNING). Without it, a
            received folder (holding ``manifest.json``) must pass verification (hashes, signature by one of
            ``trusted_keys`` unless ``allow_unsigned``, templates, weights) and a local folder's configs must be
            your templates' code with allowed parameters (:func:`pipeline.share.trust.check_bundle_folder`); they
            are read as JSON for this, never evaluated, before anything is built.
        trusted_keys, allow_unsigned, trust: as for :func:`pipeline.share.verify.verify_bundle` (received folders).

    Raises:
        BundleError: a config file or ``metadata.json`` is missing, an override or needed id is not in the config,
            or ``batch_inference`` cannot be built (the message names the file, the id and the cause).
        FileNotFoundError: no weights at ``ckpt_path`` (train the bundle or pass ``checkpoint``).
        ImportError: an optional dependency the config asks for is missing (``dicom_seg`` needs highdicom).
        UnverifiedBundleError: (a ValueError) the folder fails its check; one line naming ``file#id`` and the fix.
    """
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    check_bundle_folder(
        bundle, "run", config_files=files, trust_unverified=trust_unverified, trust=trust,
        trusted_keys=trusted_keys, allow_unsigned=allow_unsigned,
    )  # fmt: skip
    parser = open_bundle(bundle, files)
    where = " + ".join(str(Path(bundle) / "configs" / f) for f in files)
    settings = dict(overrides or {})
    if checkpoint is not None:
        settings["ckpt_path"] = str(checkpoint)
    if ENGINE_ID not in parser:
        raise BundleError(
            f"{where}: no {ENGINE_ID!r}; expected a pipeline.inference.engine.BatchInference component there (the one "
            f"the {RUN_ID!r} run id calls). Fix: add it as in {_EXAMPLE}."
        )
    unknown = [k for k in settings if k not in parser]
    if unknown:
        top = sorted(k for k in parser.get() if not k.startswith("_"))
        raise BundleError(
            f"{where}: no id {unknown[0]!r} to override (overrides must name existing ids); top-level ids: {top}. "
            "Fix: drop the override or add the id to the config."
        )
    for key, value in settings.items():
        parser[key] = value
    weights = _evaluate(parser, f"{ENGINE_ID}#checkpoint", where) if f"{ENGINE_ID}#checkpoint" in parser else None
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(
            f"No model weights at {weights} ({where}: {ENGINE_ID}#checkpoint, default @ckpt_path): train the bundle "
            "first (python -m monai.bundle run training ...) or pass --checkpoint PATH (checkpoint= in Python)."
        )
    if INIT_ID in parser:
        _evaluate(parser, INIT_ID, where)
    engine = _evaluate(parser, ENGINE_ID, where)
    if not isinstance(engine, BatchInference):
        raise BundleError(
            f"{where}: {ENGINE_ID!r} must build a pipeline.inference.engine.BatchInference, got "
            f"{type(engine).__name__}. Fix: set its _target_ as in {_EXAMPLE}."
        )
    _warn_if_names_differ(parser, engine, where)
    return engine


def _evaluate(parser: ConfigParser, key: str, where: str) -> Any:
    """``parser.get_parsed_content(key)``; MONAI's wrapped errors are unwrapped to the one that says what is wrong."""
    try:
        return parser.get_parsed_content(key)
    except Exception as e:
        cause: BaseException = e  # MONAI wraps errors in RuntimeError("Failed to instantiate/evaluate ...")
        while cause.__cause__ is not None and str(cause).startswith(_MONAI_WRAPPERS):
            cause = cause.__cause__
        msg = f"{where}: cannot build {key!r}: {type(cause).__name__}: {cause}"
        if _names_missing_id(cause):
            ref = str(cause).split("`")[1]
            msg = f"{where}: no {ref[1:]!r} (referred to as {ref} while building {key!r}). Fix: define it as in "
            msg += f"{_EXAMPLE}."
        elif isinstance(cause, FileNotFoundError):
            raise FileNotFoundError(msg) from e
        elif isinstance(cause, ImportError):
            raise ImportError(msg) from e
        raise BundleError(msg) from e


def _names_missing_id(e: BaseException) -> bool:
    return isinstance(e, ValueError) and "is not defined in the config content" in str(e) and "`@" in str(e)


def _warn_if_names_differ(parser: ConfigParser, engine: BatchInference, where: str) -> None:
    channel_def = parser.get(_CHANNEL_DEF)
    if not isinstance(channel_def, Mapping):
        return
    try:
        meta = {int(k): str(v) for k, v in channel_def.items()}
    except ValueError:
        meta = {}
    if meta != engine.labels:
        logger.warning(
            "%s: class_names %s differ from metadata.json network_data_format.outputs.pred.channel_def %s; masks are "
            "labelled by class_names. Fix: make them agree.",
            where,
            engine.labels,
            channel_def,
        )

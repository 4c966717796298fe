"""``python -m pipeline infer``: segment every NIfTI file and DICOM series under a folder with a bundle's model.

The model and its settings come from the bundle's ``configs/inference.json`` + ``configs/metadata.json`` (the same
ids ``python -m monai.bundle run inferring`` uses), so the command and the bundle produce the same masks.
Exit code: 0 all inputs processed or skipped, 3 some failed (see ``failures.csv``), 1 usage/config error,
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

HELP = "segment every NIfTI file / DICOM series under a folder with a bundle; masks in each input's own grid"

logger = logging.getLogger(__name__)

_REQUIRED = ("spatial_dims", "in_channels", "class_names", "pixdim", "intensity", "roi_size", "sw_batch_size")


class BundleError(ValueError):
    """A bundle that cannot drive inference; the message names the file and key."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", type=Path, help="folder of NIfTI files and/or DICOM series (searched recursively)")
    parser.add_argument("output_dir", type=Path, help="where masks, summary.json and failures.csv go")
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder (configs/inference.json, models/)")
    parser.add_argument("--checkpoint", type=Path, help="weights to load (default: the bundle's models/model.pt)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist")
    parser.add_argument("--probabilities", action="store_true", help="also write <case>_prob.nii.gz (float32, C)")
    parser.add_argument("--overlap", type=float, help="sliding-window overlap (default: the bundle's sw_overlap)")
    parser.add_argument("--mode", choices=("gaussian", "constant"), help="window blending (default: bundle's)")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: bundle's)")
    parser.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: CUDA when present)")
    parser.add_argument("--dicom-seg", action="store_true", help="also write DICOM SEG for DICOM series (highdicom)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_bundle(bundle: str | Path, checkpoint: str | Path | None = None, **overrides: Any) -> Any:
    """A :class:`pipeline.inference.BatchInference` configured from a bundle.

    Reads ``network_def``, ``class_names``, ``spatial_dims``, ``in_channels``, ``pixdim``, ``intensity``,
    ``roi_size``, ``sw_batch_size`` (required) and ``sw_overlap``, ``sw_mode``, ``ckpt_path`` (optional) from
    ``configs/inference.json``; weights load with ``weights_only=True``.

    Args:
        bundle: bundle folder.
        checkpoint: weights file; default the config's ``ckpt_path`` (``<bundle>/models/model.pt``).
        overrides: :class:`~pipeline.inference.BatchInference` arguments that win over the config
            (``overlap``, ``mode``, ``sw_batch_size``, ``device``, ``probabilities``, ...); None values are ignored.

    Raises:
        BundleError: a config file or key is missing or cannot be evaluated.
        FileNotFoundError: no weights (train the bundle or pass ``checkpoint``).
    """
    from monai.bundle import ConfigParser

    from pipeline.inference import BatchInference

    root = Path(bundle)
    config, meta = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    for f in (config, meta):
        if not f.is_file():
            raise BundleError(
                f"{f} not found; expected a MONAI bundle folder with configs/inference.json and metadata.json."
            )
    parser = ConfigParser()
    parser.read_config(str(config))
    parser.read_meta(str(meta))
    parser["bundle_root"] = str(root)

    def get(key: str, default: Any = KeyError) -> Any:
        if key not in parser:
            if default is KeyError:
                raise BundleError(f"{config}: no {key!r}; the inference config must define {list(_REQUIRED)}.")
            return default
        try:
            return parser.get_parsed_content(key)
        except Exception as e:
            raise BundleError(f"{config}: cannot evaluate {key!r}: {type(e).__name__}: {e}") from e

    settings = {k: get(k) for k in _REQUIRED}
    channel_def = get("_meta_#network_data_format#outputs#pred#channel_def", None)
    if channel_def and [channel_def.get(str(i)) for i in range(len(settings["class_names"]))] != list(
        settings["class_names"]
    ):
        logger.warning("%s: class_names %s differ from channel_def %s", config, settings["class_names"], channel_def)
    settings["overlap"] = get("sw_overlap", 0.25)
    settings["mode"] = get("sw_mode", "gaussian")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    weights = Path(checkpoint) if checkpoint is not None else Path(get("ckpt_path", str(root / "models" / "model.pt")))
    return BatchInference(get("network_def"), checkpoint=weights, **settings)


def run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from pipeline.data import DatalistError

    try:
        engine = load_bundle(
            args.bundle,
            args.checkpoint,
            overlap=args.overlap,
            mode=args.mode,
            sw_batch_size=args.sw_batch_size,
            device=args.device,
            probabilities=args.probabilities,
            dicom_seg=args.dicom_seg,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
        with logging_redirect_tqdm():
            report = engine.run(args.input_dir, args.output_dir)
    except (BundleError, DatalistError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_proc, n_skip, n_fail = len(report.processed), len(report.skipped), len(report.failed)
    print(f"{n_proc} processed, {n_skip} skipped (already done), {n_fail} failed in {report.seconds:.1f} s")
    for f in report.failed[:10]:
        print(f"  FAILED {f['input']} [{f['stage']}]: {f['reason']}")
    if n_fail > 10:
        print(f"  ... {n_fail - 10} more")
    print(f"outputs in {report.output_dir} (summary.json, failures.csv)")
    return report.exit_code

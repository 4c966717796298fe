"""``python -m pipeline evaluate``: score saved NIfTI predictions against reference labels, per case and class."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HELP = "evaluate saved predictions against labels: per-case/per-class metrics, macro/micro summary"

_GLOBS = ("*.nii.gz", "*.nii")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pred-dir", required=True, type=Path, help="folder of predicted label maps (searched recursively)"
    )
    parser.add_argument("--label-dir", type=Path, help="folder of reference label maps (searched recursively)")
    parser.add_argument(
        "--dataset-json", type=Path, help="MSD-style dataset.json giving labels (and images, for overlays)"
    )
    parser.add_argument("--section", default="training", help="dataset.json section to read (default: training)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the tables")
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--class-names", help='JSON: {"1": "organ", ...} or ["background", "organ", ...]')
    names.add_argument("--bundle", type=Path, help="bundle folder; class names from configs/metadata.json channel_def")
    # without either: the dataset.json "labels" map, else class_<value>
    parser.add_argument("--pred-postfix", default="seg", help="strip '_<postfix>' from prediction names (default: seg)")
    parser.add_argument("--include-background", action="store_true", help="also report class 0")
    parser.add_argument("--allow-unpaired", action="store_true", help="evaluate the pairs found, warn about the rest")


def _files(folder: Path) -> list[Path]:
    return sorted({p for g in _GLOBS for p in folder.rglob(g)})


def _index(paths: Iterable[Path], postfix: str, what: str) -> dict[str, Path]:
    from pipeline.data.datalist import case_id

    out: dict[str, Path] = {}
    for p in paths:
        case = case_id(p, postfix, channel_suffix=False)
        if case in out:
            raise ValueError(f"two {what} files for case {case!r}: {out[case]} and {p}; keep one per case.")
        out[case] = p
    return out


def _from_dataset_json(path: Path, section: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """``({case: label}, {case: image})`` from an MSD ``dataset.json`` (paths relative to its folder)."""
    from pipeline.data.datalist import case_id

    data = json.loads(path.read_text())
    entries = data.get(section)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: no list {section!r}; expected MSD-style entries; sections: {sorted(data)}.")
    labels, images = {}, {}
    for e in entries:
        if isinstance(e, dict) and e.get("label"):
            label = (path.parent / e["label"]).resolve()
            case = case_id(label, channel_suffix=False)
            labels[case] = label
            if isinstance(e.get("image"), str):
                images[case] = (path.parent / e["image"]).resolve()
    return labels, images


def _class_names(args: argparse.Namespace, label_values: set[int]) -> dict[int, str]:
    """From --class-names, --bundle's channel_def, the dataset.json ``labels``, or named by value."""
    from pipeline.evaluation.cases import normalize_class_names

    if args.class_names:
        try:
            return normalize_class_names(json.loads(args.class_names))
        except json.JSONDecodeError as e:
            raise ValueError(f'--class-names is not JSON ({e}); expected e.g. \'{{"1": "organ"}}\'.') from e
    if args.bundle:
        meta = args.bundle / "configs" / "metadata.json"
        try:
            channel_def = json.loads(meta.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
        except (OSError, KeyError, json.JSONDecodeError) as e:
            raise ValueError(
                f"{meta}: no network_data_format.outputs.pred.channel_def ({e!r}); pass --class-names instead."
            ) from e
        return normalize_class_names(channel_def)
    if args.dataset_json:
        msd_labels = json.loads(args.dataset_json.read_text()).get("labels")
        if isinstance(msd_labels, dict) and msd_labels:
            return normalize_class_names(msd_labels)
    print(f"note: no --class-names/--bundle; naming classes by value: {sorted(label_values)}")
    return {v: "background" if v == 0 else f"class_{v}" for v in sorted(label_values | {0})}


def _pair(args: argparse.Namespace) -> tuple[dict[str, tuple[Path, Path]], dict[str, Path], list[str]]:
    images: dict[str, Path] = {}
    if args.dataset_json:
        labels, images = _from_dataset_json(args.dataset_json, args.section)
    elif args.label_dir:
        labels = _index(_files(args.label_dir), "", "label")
    else:
        raise ValueError("give --label-dir or --dataset-json to find the reference labels.")
    preds = _index(_files(args.pred_dir), args.pred_postfix, "prediction")
    if not preds:
        raise ValueError(f"no *.nii / *.nii.gz predictions under {args.pred_dir}.")
    problems = [f"prediction without label: {preds[c]} (case {c!r})" for c in sorted(preds.keys() - labels.keys())]
    problems += [f"label without prediction: {labels[c]} (case {c!r})" for c in sorted(labels.keys() - preds.keys())]
    pairs = {c: (preds[c], labels[c]) for c in sorted(preds.keys() & labels.keys())}
    return pairs, images, problems


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from pipeline.evaluation.metrics import case_metrics, summarize, write_evaluation
    from pipeline.utils.atomic import write_text

    pairs, images, problems = _pair(args)
    if problems:
        print(f"{len(problems)} unpaired file(s) (case id = file name without extension and '_{args.pred_postfix}'):")
        for p in problems:
            print(f"  {p}")
        if not args.allow_unpaired:
            print("error: fix the names, or pass --allow-unpaired to evaluate only the pairs.", file=sys.stderr)
            return 1
    if not pairs:
        print("error: no prediction/label pairs to evaluate.", file=sys.stderr)
        return 1

    loaded: dict[str, tuple[Any, Any, tuple[float, ...]]] = {}
    values: set[int] = set()
    for case, (pred_path, label_path) in pairs.items():
        label_img: Any = nib.load(str(label_path))
        pred_img: Any = nib.load(str(pred_path))
        label = np.asanyarray(label_img.dataobj)
        pred = np.asanyarray(pred_img.dataobj)
        pred = pred.reshape(pred.shape[: label.ndim]) if pred.ndim > label.ndim else pred
        if pred.shape != label.shape:
            raise ValueError(
                f"case {case!r}: prediction {pred_path} has shape {pred.shape}, label {label_path} has {label.shape}; "
                "save predictions in the label's space."
            )
        if not np.allclose(pred_img.affine, label_img.affine, atol=1e-3):
            print(f"warning: case {case!r}: prediction and label affines differ; comparing voxel by voxel.")
        values |= {int(v) for v in np.unique(label)}
        zooms = tuple(float(z) for z in label_img.header.get_zooms()[: label.ndim])
        loaded[case] = (pred, label, zooms)

    class_names = _class_names(args, values)
    rows = []
    for case, (pred, label, zooms) in loaded.items():
        rows += case_metrics(
            np.rint(pred)[None].astype(np.int64),
            np.rint(label)[None].astype(np.int64),
            class_names,
            spacing=zooms,
            include_background=args.include_background,
            case_id=case,
        )
    paths = write_evaluation(rows, args.out)
    sources = {
        c: {"image": str(images[c]) if c in images else None, "label": str(lab), "pred": str(pred)}
        for c, (pred, lab) in pairs.items()
    }
    write_text(args.out / "cases.json", json.dumps(sources, indent=2) + "\n")
    _print_summary(summarize(rows), len(pairs))
    print(f"wrote {paths['csv']}, {paths['json'].name}, {paths['md'].name}, cases.json")
    return 0


def _print_summary(summary: Mapping[str, Any], n: int) -> None:
    print(f"{n} cases")
    print(f"{'class':<16}{'dice':>16}{'iou':>8}{'hd95':>10}  excluded  missed  fp_only")
    for name, c in summary["classes"].items():
        d, i, h = (c["metrics"][m] for m in ("dice", "iou", "hd95"))
        dice = "–" if d["mean"] is None else f"{d['mean']:.3f} ± {d['std']:.3f}"
        iou = "–" if i["mean"] is None else f"{i['mean']:.3f}"
        hd = "–" if h["mean"] is None else f"{h['mean']:.2f}"
        st = c["status"]
        print(f"{name:<16}{dice:>16}{iou:>8}{hd:>10}  {c['n_excluded']:>8}  {st['missed']:>6}  {st['fp_only']:>7}")
    macro, micro = summary["macro"]["dice"], summary["micro"]["dice"]
    print(f"macro Dice (mean of class means): {'–' if macro is None else f'{macro:.3f}'}")
    print(f"micro Dice (pooled voxels):       {'–' if micro is None else f'{micro:.3f}'}")

"""``python -m pipeline evaluate``: score saved NIfTI predictions against reference labels, per case and class.

Every file is checked before anything is scored, and a bad one stops the run with one line naming it: an unreadable,
empty or truncated file; non-integer values (0.5: a probability or interpolated map, never rounded silently); a
prediction on another grid than its label (shape, origin, orientation): refused unless ``--resample`` asks to resample
it onto the label's grid (nearest neighbour).
"""

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
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample a prediction on another grid than its label onto the label's grid (nearest neighbour)",
    )


_FIX = {
    "prediction": "re-run inference for this case (python -m pipeline infer ... --overwrite) or remove the file",
    "label": "replace it with a good copy",
}


def _unreadable(path: Path, what: str, e: BaseException) -> ValueError:
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    return ValueError(
        f"{what} {path} cannot be read ({reason}); expected a complete NIfTI label map (probably truncated: "
        f"killed while writing, or copied incompletely). Fix: {_FIX[what]}."
    )


def _read_label_map(path: Path, what: str) -> tuple[Any, Any]:
    """``(image, integer array)`` of a NIfTI label map.

    Raises:
        ValueError: one line naming the file: empty, unreadable/truncated, or holding non-integer values.
    """
    import nibabel as nib
    import numpy as np

    try:
        size = path.stat().st_size
        if size == 0:
            raise ValueError("the file is empty (0 bytes)")
        img: Any = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except OSError as e:  # permission denied, a symlink loop, ...: the file itself is not the problem
        if e.errno is None:  # gzip's "not a gzipped file" / EOF errors are OSErrors without errno
            raise _unreadable(path, what, e) from e
        raise ValueError(
            f"{what} {path} cannot be opened ({e.strerror}, errno {e.errno}). Fix: check its permissions and path."
        ) from e
    except Exception as e:  # nibabel, gzip and zlib errors all mean "cannot read it"
        raise _unreadable(path, what, e) from e
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        bad = arr != np.rint(arr)  # also NaN
        if bad.any():
            raise ValueError(
                f"{what} {path} holds non-integer values (e.g. {float(arr[bad].flat[0]):g}, {int(bad.sum())} voxels); "
                f"expected integer class labels. Fix: save {what}s as label maps (argmax of the probabilities, "
                "nearest-neighbour resampling), not probabilities or interpolated values."
            )
    return img, arr.astype(np.int64)


def _grid_difference(pred_img: Any, pred_shape: tuple[int, ...], label_img: Any, shape: tuple[int, ...]) -> str:
    """What differs between two voxel grids, e.g. ``"origin 20.0 mm apart, orientation RPS vs RAS"``; "" if none."""
    import nibabel as nib
    import numpy as np

    parts = []
    if pred_shape != shape:
        parts.append(f"shape {pred_shape} vs {shape}")
    a, b = np.asarray(pred_img.affine, dtype=float), np.asarray(label_img.affine, dtype=float)
    if not np.allclose(a, b, atol=1e-3):
        shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
        if shift > 1e-3:
            parts.append(f"origin {shift:.1f} mm apart")
        codes = "".join(nib.aff2axcodes(a)), "".join(nib.aff2axcodes(b))
        if codes[0] != codes[1]:
            parts.append(f"orientation {codes[0]} vs {codes[1]}")
        zooms = tuple(tuple(round(float(z), 3) for z in np.linalg.norm(m[:3, :3], axis=0)) for m in (a, b))
        if zooms[0] != zooms[1]:
            parts.append(f"spacing {zooms[0]} vs {zooms[1]} mm")
        if len(parts) == (pred_shape != shape):
            parts.append("direction differs")
    return ", ".join(parts)


def _load_pair(case: str, pred_path: Path, label_path: Path, resample: bool) -> tuple[Any, Any, tuple[float, ...]]:
    """``(prediction, label, label spacing)`` on the label's grid.

    Raises:
        ValueError: a file is bad (see :func:`_read_label_map`), or the prediction is on another grid and ``resample``
            is False; one line naming both files and the fix.
    """
    import nibabel as nib
    import numpy as np

    label_img, label = _read_label_map(label_path, "label")
    pred_img, pred = _read_label_map(pred_path, "prediction")
    if pred.ndim > label.ndim and all(n == 1 for n in pred.shape[label.ndim :]):
        pred = pred.reshape(pred.shape[: label.ndim])
    diff = _grid_difference(pred_img, pred.shape, label_img, label.shape)
    if diff and not resample:
        raise ValueError(
            f"case {case!r}: prediction {pred_path} and label {label_path} are on different grids ({diff}); scoring "
            "them voxel by voxel would compare different places. Fix: save predictions in the label's grid (python "
            "-m pipeline infer does), or pass --resample to resample each prediction onto its label's grid."
        )
    if diff:
        from nibabel.processing import resample_from_to

        src = nib.Nifti1Image(pred.astype(np.int16), pred_img.affine)
        dst = (label.shape, label_img.affine)
        pred = np.asanyarray(resample_from_to(src, dst, order=0, mode="constant", cval=0).dataobj).astype(np.int64)
        print(f"note: case {case!r}: resampled {pred_path} onto the grid of {label_path} ({diff}).")
    zooms = tuple(float(z) for z in label_img.header.get_zooms()[: label.ndim])
    return pred, label, zooms


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
        pred, label, zooms = _load_pair(case, pred_path, label_path, args.resample)
        values |= {int(v) for v in np.unique(label)}
        loaded[case] = (pred, label, zooms)

    class_names = _class_names(args, values)
    rows = []
    for case, (pred, label, zooms) in loaded.items():
        rows += case_metrics(
            pred[None],
            label[None],
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

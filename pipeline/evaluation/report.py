"""Plots and a markdown report of a training run and its evaluation (matplotlib, no pyplot / GUI backend).

- :func:`read_scalars` / :func:`plot_curves`: training and validation curves from TensorBoard event files.
- :func:`plot_boxplot`: one box per class over cases, from ``metrics_per_case.csv`` rows.
- :func:`plot_overlay`: image | reference | prediction through the middle of a structure.
- :func:`build_report`: all of it, plus ``summary.md`` and the best / worst case per class, in one markdown file.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from pipeline.evaluation.metrics import read_case_csv, summary_markdown
from pipeline.utils.atomic import atomic_path, write_text

__all__ = [
    "best_and_worst",
    "build_report",
    "compare_markdown",
    "load_volume",
    "plot_boxplot",
    "plot_curves",
    "plot_overlay",
    "read_scalars",
]

logger = logging.getLogger(__name__)

Scalars = dict[str, list[tuple[int, float]]]


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def read_scalars(run_dir: str | os.PathLike[str]) -> Scalars:
    """Every scalar in the TensorBoard event files under ``run_dir`` (searched recursively).

    Returns:
        ``{tag: [(step, value), ...]}`` sorted by step. A tag found in several event folders is prefixed with
        the folder relative to ``run_dir``.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(run_dir)
    dirs = sorted({p.parent for p in root.rglob("events.out.tfevents.*")})
    found: dict[Path, Scalars] = {}
    for d in dirs:
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        found[d] = {t: sorted((e.step, float(e.value)) for e in acc.Scalars(t)) for t in acc.Tags()["scalars"]}
    counts: dict[str, int] = {}
    for tags in found.values():
        for t in tags:
            counts[t] = counts.get(t, 0) + 1
    out: Scalars = {}
    for d, tags in found.items():
        for t, values in tags.items():
            key = t if counts[t] == 1 else f"{d.relative_to(root).as_posix()}/{t}"
            out[key] = values
    return out


def plot_curves(scalars: Mapping[str, Sequence[tuple[int, float]]], out_png: str | os.PathLike[str]) -> Path | None:
    """Loss curves (tags containing ``loss``) on the left, every other scalar (validation metrics) on the right.

    Returns:
        The PNG path, or ``None`` when there are no scalars.
    """
    if not scalars:
        return None
    loss = {t: v for t, v in scalars.items() if "loss" in t.lower()}
    other = {t: v for t, v in scalars.items() if t not in loss and "lr" not in t.lower().split("/")}
    panels = [(title, tags) for title, tags in (("training loss", loss), ("validation", other)) if tags]
    fig = Figure(figsize=(6 * len(panels), 4))
    for i, (title, tags) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for tag, values in sorted(tags.items()):
            steps, ys = zip(*values, strict=True) if values else ((), ())
            ax.plot(steps, ys, marker="o" if len(values) < 30 else None, markersize=3, label=tag)
        ax.set_title(title)
        ax.set_xlabel("iteration" if title == "training loss" else "epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, out_png)


def plot_boxplot(
    rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike[str], metric: str = "dice"
) -> Path | None:
    """Box plot of ``metric`` per class over cases, points overlaid; excluded / non-finite values left out.

    Returns:
        The PNG path, or ``None`` when no class has a value.
    """
    data: dict[str, list[float]] = {}
    for r in rows:
        v = r.get(metric)
        data.setdefault(str(r["class"]), [])
        if v is not None and math.isfinite(float(v)):
            data[str(r["class"])].append(float(v))
    data = {k: v for k, v in data.items() if v}
    if not data:
        return None
    fig = Figure(figsize=(max(4.0, 1.2 * len(data) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    ax.boxplot(list(data.values()), showmeans=True)
    ax.set_xticks(range(1, len(data) + 1), list(data))
    for i, values in enumerate(data.values(), start=1):
        ax.scatter(np.full(len(values), i) + np.linspace(-0.08, 0.08, len(values)), values, s=10, alpha=0.6)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per case")
    if metric in ("dice", "iou", "precision", "recall", "specificity"):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_png)


def load_volume(path: str | os.PathLike[str]) -> np.ndarray:
    """A NIfTI (or ``.npy``) file as an array with singleton trailing axes squeezed."""
    if str(path).endswith(".npy"):
        return np.load(path)
    import nibabel as nib

    img: Any = nib.load(str(path))
    arr = np.asanyarray(img.dataobj)
    while arr.ndim > 2 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return np.asarray(arr)


def _middle_slice(mask: np.ndarray) -> int:
    idx = np.nonzero(mask.reshape(-1, mask.shape[-1]).any(0))[0]
    return int((idx[0] + idx[-1]) // 2) if idx.size else mask.shape[-1] // 2


def plot_overlay(
    image: np.ndarray | None,
    label: np.ndarray,
    pred: np.ndarray,
    out_png: str | os.PathLike[str],
    class_index: int,
    title: str = "",
) -> Path:
    """Image | reference | prediction (with the reference outline) for one class; 3D volumes are cut along the
    last axis through the middle of the structure's extent in the reference (the prediction when it lacks it).

    Args:
        image: ``(H, W[, D])`` intensities or ``None`` (a blank background).
        label: ``(H, W[, D])`` reference label map.
        pred: ``(H, W[, D])`` predicted label map.
        out_png: output file.
        class_index: the class to highlight.
        title: figure title.
    """
    if label.shape != pred.shape or (image is not None and image.shape != label.shape):
        raise ValueError(
            f"overlay arrays must share a shape, got image {None if image is None else image.shape}, "
            f"label {label.shape}, pred {pred.shape}; resample the prediction to the label's space."
        )
    img = np.zeros(label.shape, np.float32) if image is None else image.astype(np.float32)
    ref, prd = label == class_index, pred == class_index
    if label.ndim == 3:
        k = _middle_slice(ref if ref.any() else prd)
        img, ref, prd = img[..., k], ref[..., k], prd[..., k]
        title = f"{title} (slice {k})"
    fig = Figure(figsize=(9, 3.4))
    fig.suptitle(title, fontsize=10)
    for i, (name, mask, color) in enumerate(
        (("image", None, ""), ("reference", ref, "lime"), ("prediction", prd, "red"))
    ):
        ax = fig.add_subplot(1, 3, i + 1)
        ax.imshow(img.T, cmap="gray", origin="lower")
        if mask is not None:
            ax.imshow(np.ma.masked_where(~mask.T, mask.T), cmap=ListedColormap([color]), alpha=0.5, origin="lower")
        if name == "prediction" and ref.any() and not ref.all():
            ax.contour(ref.T.astype(float), levels=[0.5], colors="lime", linewidths=1.0, origin="lower")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    return _save(fig, out_png)


def best_and_worst(rows: Sequence[Mapping[str, Any]], metric: str = "dice") -> dict[str, tuple[Mapping, Mapping]]:
    """Per class, the (worst, best) row by ``metric`` among rows that have a value."""
    out: dict[str, tuple[Mapping, Mapping]] = {}
    for name in dict.fromkeys(str(r["class"]) for r in rows):
        scored = [r for r in rows if str(r["class"]) == name and r.get(metric) is not None]
        if scored:
            ranked = sorted(scored, key=lambda r: (float(r[metric]), str(r["case"])))
            out[name] = (ranked[0], ranked[-1])
    return out


def compare_markdown(summaries: Mapping[str, Mapping[str, Any]], metric: str = "dice") -> str:
    """A table of the per-class mean ``metric`` of several evaluations (e.g. transfer vs scratch), best in bold."""
    runs = list(summaries)
    classes = list(dict.fromkeys(c for s in summaries.values() for c in s["classes"]))
    lines = [f"| class | {' | '.join(runs)} | best |", "|---" * (len(runs) + 2) + "|"]
    for c in [*classes, "macro"]:
        vals = []
        for s in summaries.values():
            v = s["macro"].get(metric) if c == "macro" else s["classes"].get(c, {}).get("metrics", {}).get(metric, {})
            vals.append(v if c == "macro" else (v or {}).get("mean"))
        known = [v for v in vals if v is not None]
        top = max(known) if known else None
        unique_top = top is not None and vals.count(top) == 1 and len(known) > 1
        cells = ["–" if v is None else (f"**{v:.3f}**" if v == top and unique_top else f"{v:.3f}") for v in vals]
        best = runs[vals.index(top)] if top is not None and vals.count(top) == 1 else "tie" if known else "–"
        lines.append(f"| {c} | {' | '.join(cells)} | {best} |")
    return "\n".join(lines) + "\n"


def _overlays(eval_dir: Path, rows: Sequence[Mapping[str, Any]], fig_dir: Path, md_dir: Path) -> list[str]:
    cases_json = eval_dir / "cases.json"
    if not cases_json.is_file():
        return ["_No `cases.json` in the evaluation folder; overlays skipped._", ""]
    sources = json.loads(cases_json.read_text())
    lines: list[str] = []
    cache: dict[str, np.ndarray] = {}

    def load(p: str | None) -> np.ndarray | None:
        if not p or not Path(p).is_file():
            return None
        if p not in cache:
            cache[p] = load_volume(p)
        return cache[p]

    for name, (worst, best) in best_and_worst(rows).items():
        picks = [("worst", worst), ("best", best)] if worst is not best else [("only", worst)]
        for which, row in picks:
            src = sources.get(str(row["case"]), {})
            label, pred = load(src.get("label")), load(src.get("pred"))
            if label is None or pred is None:
                lines.append(f"- {name}, {which} ({row['case']}): label or prediction file not available.")
                continue
            image = load(src.get("image"))
            if image is not None and image.shape != label.shape:
                image = None
            title = f"{name} {which}: {row['case']} (Dice {float(row['dice']):.3f})"
            png = fig_dir / f"overlay_{name}_{which}.png"
            try:
                plot_overlay(image, label, pred, png, int(row["class_index"]), title)
            except ValueError as e:
                lines.append(f"- {name}, {which} ({row['case']}): {e}")
                continue
            lines += [f"![{title}]({png.relative_to(md_dir).as_posix()})", ""]
    return [*lines, ""]


def build_report(
    run_dir: str | os.PathLike[str] | None,
    eval_dir: str | os.PathLike[str] | None = None,
    out_md: str | os.PathLike[str] | None = None,
    title: str = "Segmentation report",
    compare: Mapping[str, str | os.PathLike[str]] | None = None,
) -> Path:
    """Collect curves, the evaluation summary, a box plot and best / worst overlays into one markdown file.

    Args:
        run_dir: training run folder with TensorBoard event files (searched recursively), or ``None``.
        eval_dir: folder with ``metrics_per_case.csv`` (and ``cases.json`` for overlays); default
            ``<run_dir>/eval`` when it exists.
        out_md: report path; default ``<run_dir or eval_dir>/report.md``. PNGs go to ``<stem>_figures/`` beside it.
        title: top heading.
        compare: ``{label: eval_dir}`` of evaluations to tabulate side by side (per-class mean Dice).

    Returns:
        The markdown path.
    """
    run = Path(run_dir) if run_dir is not None else None
    if eval_dir is None and run is not None and (run / "eval" / "metrics_per_case.csv").is_file():
        eval_dir = run / "eval"
    ev = Path(eval_dir) if eval_dir is not None else None
    if run is None and ev is None:
        raise ValueError("build_report needs a run_dir or an eval_dir, got neither.")
    base = run if run is not None else ev
    assert base is not None
    md = Path(out_md) if out_md is not None else base / "report.md"
    fig_dir = md.parent / f"{md.stem}_figures"
    lines = [f"# {title}", ""]
    if run is not None:
        lines += ["## Training curves", ""]
        curves = plot_curves(read_scalars(run), fig_dir / "curves.png") if run.is_dir() else None
        lines += [f"![curves]({curves.relative_to(md.parent).as_posix()})" if curves else "_No scalars found._", ""]
    if ev is not None:
        csv_path = ev / "metrics_per_case.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"no metrics_per_case.csv in {ev}; run `python -m pipeline evaluate` first.")
        rows = read_case_csv(csv_path)
        summary_path = ev / "summary.json"
        if summary_path.is_file():
            lines.append(summary_markdown(json.loads(summary_path.read_text()), title="Evaluation"))
        box = plot_boxplot(rows, fig_dir / "dice_boxplot.png")
        if box is not None:
            lines += ["### Dice per case", "", f"![dice per case]({box.relative_to(md.parent).as_posix()})", ""]
        lines += ["### Worst and best case per class", "", *_overlays(ev, rows, fig_dir, md.parent)]
    if compare:
        loaded = {}
        for label, folder in compare.items():
            path = Path(folder) / "summary.json"
            if not path.is_file():
                raise FileNotFoundError(f"comparison {label!r}: no summary.json in {folder}; evaluate that run first.")
            loaded[label] = json.loads(path.read_text())
        lines += ["## Comparison (mean Dice per class)", "", compare_markdown(loaded)]
    write_text(md, "\n".join(lines))
    logger.info("report written to %s", md)
    return md

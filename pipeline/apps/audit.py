"""Class-balance audit of a labelled dataset, and the sampling / loss settings it recommends.

:func:`audit_dataset` reads every label of the chosen sections once and reports, per case and overall, the voxel
fraction of each class, the cases missing a class, the size of the smallest and largest structure of each class
(connected components, 26-connectivity in 3D / 8 in 2D, in voxels and mm³ — mm² for 2D), the spread of spacing,
shape and orientation, and problems (label values outside the declared classes, non-integer labels, unreadable,
non-image or truncated images and labels, zero/negative ``pixdim`` without qform/sform, image/label shape mismatch),
one line each naming the file and the fix. 2D labels (``spatial_dims=2``, e.g. from the 2D bundle) are read
as the 2D chains read them: :class:`pipeline.checks.images.CaseReader`, RGB(A)-coded masks mapped with
``label_colors``. :func:`recommend` turns the numbers into per-class sampling
``ratios`` and CE ``ce_weight`` with the reasoning; :func:`override_config` is the bundle override
(``--args_file`` or an extra ``--config_file``). How to read it: ``docs/class-imbalance.md``.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from pipeline.bundle.config import bundle_class_names, get_parsed, open_bundle
from pipeline.checks.images import CaseReader, SpacingError, read_image_info
from pipeline.checks.settings import class_names_problem, label_colors_fallback
from pipeline.data.datalist import case_id, class_names_from_dataset, load_datalist

__all__ = [
    "AuditReport",
    "CaseAudit",
    "ClassNamesError",
    "Recommendation",
    "audit_dataset",
    "audit_markdown",
    "override_config",
    "plot_audit",
    "recommend",
    "write_audit",
]

logger = logging.getLogger(__name__)

MAX_BOOST = 4.0  # cap of a rare class's frequency boost in the sampling ratios
MAX_RATIO = 10.0  # cap of a ratio after compensating for cases that lack the class
MAX_CE_RATIO = 10.0  # cap of a CE weight relative to the most frequent class
TINY_STRUCTURE = 30  # voxels; smaller structures get a note about resampling


@dataclass
class CaseAudit:
    """One label file: geometry, voxels per class index, structures per class, problems."""

    case: str
    label: str
    shape: list[int]
    spacing: list[float]
    axcodes: str
    voxels: dict[int, int] = field(default_factory=dict)
    components: dict[int, list[int]] = field(default_factory=dict)  # class -> [count, smallest, largest] voxels
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 0

    @property
    def voxel_size(self) -> float:
        return float(np.prod(self.spacing)) if self.spacing else math.nan


@dataclass
class Recommendation:
    """Recommended sampling and loss settings (bundle ids) with the reasoning, one line per decision."""

    sampling: str
    ratios: list[float]
    pos: float
    neg: float
    ce_weight: list[float]
    expected_share: list[float]  # share of patch centres per class over the dataset with these ratios
    reasons: list[str]


@dataclass
class AuditReport:
    """Everything :func:`audit_dataset` found; ``to_dict()`` is ``audit.json``."""

    dataset_dir: str
    class_names: dict[int, str]
    class_source: str
    cases: list[CaseAudit]
    classes: list[dict[str, Any]]
    geometry: dict[str, Any]
    errors: list[str]
    notes: list[str]
    recommendation: Recommendation | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = {str(k): v for k, v in self.class_names.items()}
        d["cases"] = [
            {**asdict(c), "fractions": {self.class_names.get(k, str(k)): v / c.total for k, v in c.voxels.items()}}
            for c in self.cases
        ]
        return json.loads(json.dumps(d, default=str))


def _read_label(path: str) -> tuple[np.ndarray, np.ndarray, list[float]]:
    if path.lower().endswith((".nii", ".nii.gz")):
        img: Any = nib.load(path)
        arr, affine = np.asanyarray(img.dataobj), img.affine
        spacing = [float(s) for s in img.header.get_zooms()]
    else:
        from monai.data.utils import affine_to_spacing
        from monai.transforms import LoadImage

        t = LoadImage(image_only=True)(path)
        arr, affine = np.asarray(t), np.asarray(t.affine)
        spacing = [float(s) for s in affine_to_spacing(affine, r=min(arr.ndim, 3))]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map, got shape {arr.shape}; split channels or time points first.")
    return arr, affine, spacing[: arr.ndim]


def _read_label_2d(path: str, reader: CaseReader) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """A 2D label as class indices ``(H, W)`` (colours mapped), its affine and pixel size."""
    problems, info, arr = reader.read(path, "label")
    if info is None or arr is None or problems:
        raise ValueError("; ".join(p.message for p in problems) or "not a readable 2D label")
    if len(info.spatial_shape) != 2:
        raise ValueError(f"expected a 2D label (spatial_dims=2), got spatial shape {list(info.spatial_shape)}")
    problems, classes = reader.label_classes(arr, path)
    if classes is None:
        raise ValueError("; ".join(p.message for p in problems))
    return classes, np.asarray(info.affine), list(info.spacing)


def _audit_case(item: dict[str, str], declared: set[int] | None, reader: CaseReader | None = None) -> CaseAudit:
    path = item["label"]
    audit = CaseAudit(case_id(path), path, [], [], "")
    try:
        if reader is None and path.lower().endswith((".nii", ".nii.gz")):
            read_image_info(path)  # truncation (gzip trailer, file size) and pixdim without qform/sform
        arr, affine, spacing = _read_label(path) if reader is None else _read_label_2d(path, reader)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, not fatal
        audit.errors.append(f"{path}: cannot read label ({_reason(e)}). Fix: {_fix(e)}.")
        return audit
    audit.shape, audit.spacing = list(arr.shape), spacing
    audit.axcodes = "".join(str(c) for c in nib.aff2axcodes(affine))
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        frac = finite & (arr != np.rint(np.where(finite, arr, 0)))
        if not finite.all() or frac.any():
            examples = sorted({float(v) for v in np.unique(arr[frac | ~finite])[:5]})
            audit.errors.append(
                f"{path}: non-integer label values, e.g. {examples} ({int((frac | ~finite).sum())} voxels); labels "
                "must be integer class indices. Re-save with np.rint(...).astype(np.uint8) and check the label was "
                "not resampled with linear interpolation (use nearest)."
            )
        arr = np.rint(np.where(finite, arr, -1))
    values = arr.astype(np.int64)
    uniq, counts = np.unique(values, return_counts=True)
    audit.voxels = {int(v): int(n) for v, n in zip(uniq, counts, strict=True)}
    if declared is not None:
        bad = {v: n for v, n in audit.voxels.items() if v not in declared}
        if bad:
            audit.errors.append(
                f"{path}: label values {sorted(bad)} ({sum(bad.values())} voxels) are not declared classes "
                f"{sorted(declared)}. Remap them to declared classes, or declare them (bundle channel_def / "
                "dataset.json labels)."
            )
    structure = ndimage.generate_binary_structure(values.ndim, values.ndim)
    for v in audit.voxels:
        if v > 0 and (declared is None or v in declared):
            lab, n = ndimage.label(values == v, structure=structure)
            sizes = np.bincount(lab.ravel())[1:]
            audit.components[v] = [int(n), int(sizes.min()), int(sizes.max())]
    image = item.get("image")
    nifti = image is not None and image.lower().endswith((".nii", ".nii.gz"))
    if image and (reader is None or nifti):
        try:
            info = read_image_info(image)  # headers (NIfTI: truncation too), else the whole file through MONAI
        except Exception as e:  # noqa: BLE001 - unreadable, not an image, truncated: reported, not fatal
            audit.errors.append(f"{image}: cannot read image ({_reason(e)}). Fix: {_fix(e)}.")
            return audit
        ishape = tuple(info.spatial_shape)
        if nifti and ishape[: len(audit.shape)] != tuple(audit.shape)[: len(ishape)]:
            audit.errors.append(f"{path}: label shape {tuple(audit.shape)} differs from image {image} shape {ishape}.")
    return audit


def _reason(e: BaseException) -> str:
    """One line: the reader's message (first line, clipped), with the exception type when it says little."""
    text = " ".join(str(e).split())[:300]
    if isinstance(e, PermissionError):
        return f"permission denied: {e.strerror or text}"
    return text if isinstance(e, (ValueError, EOFError)) and text else f"{type(e).__name__}: {text}"


def _fix(e: BaseException) -> str:
    if isinstance(e, EOFError):
        return "copy or export the file again"
    if isinstance(e, SpacingError):
        return "re-export it with its real spacing and orientation (qform/sform)"
    if isinstance(e, PermissionError) or isinstance(e.__cause__, PermissionError):
        return "make the file readable (chmod a+r), or run as a user who may read it"
    return "re-export or replace the file (NIfTI, or a format MONAI's LoadImage reads)"


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


_READING_IDS = ("spatial_dims", "label_colors", "channel_dim", "color_tolerance")


def _reading_settings(
    dataset_dir: str | Path, bundle: str | Path | None, given: Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[str]]:
    """How to read the labels: arguments given, else the bundle's ``train.json`` ids, else 3D / dataset.json colours."""
    settings = {k: v for k, v in given.items() if v is not None}
    if bundle is not None and any(k not in settings for k in _READING_IDS):
        parser = open_bundle(bundle, "train.json", overrides)
        for key in _READING_IDS:
            if key not in settings and key in parser:
                settings[key] = get_parsed(parser, key)
    note = label_colors_fallback(dataset_dir, settings)
    return settings, [f"{note.where}: {note.message}"] if note is not None else []


class ClassNamesError(ValueError):
    """The bundle's (or given) class names differ from the dataset's ``dataset.json`` ``labels``; the message says
    both and the fix (``python -m pipeline plan``)."""


def _bundle_classes(bundle: str | Path, overrides: Mapping[str, Any] | None) -> tuple[dict[int, str], str]:
    """What training would use: ``class_names`` of ``train.json`` (after ``overrides``), else ``channel_def``."""
    parser = open_bundle(bundle, "train.json", overrides)
    if "class_names" in parser:
        names = get_parsed(parser, "class_names")
        where = "--set class_names" if overrides and "class_names" in overrides else "class_names"
        return {i: str(n) for i, n in enumerate(names)}, f"{Path(bundle) / 'configs' / 'train.json'} {where}"
    return bundle_class_names(bundle), f"{Path(bundle) / 'configs' / 'metadata.json'} channel_def"


def audit_dataset(
    dataset_dir: str | Path,
    bundle: str | Path | None = None,
    class_names: dict[int, str] | None = None,
    sections: tuple[str, ...] = ("training", "validation"),
    spatial_dims: int | None = None,
    label_colors: Mapping[Any, Sequence[int]] | None = None,
    channel_dim: str | int | None = None,
    color_tolerance: float | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AuditReport:
    """Audit the labels of ``sections`` of a dataset (MSD ``dataset.json`` or ``imagesTr``/``labelsTr``).

    Args:
        dataset_dir: dataset folder.
        bundle: bundle folder; class names from its ``train.json`` ``class_names`` (after ``overrides``; else
            ``metadata.json`` ``channel_def``), and how to read labels (``spatial_dims``, ``label_colors``,
            ``channel_dim``, ``color_tolerance``) from its ``train.json``.
        class_names: ``{index: name}``; overrides ``bundle``. Without either: ``dataset.json`` ``labels``, else
            every value found (``class_<v>``, with a note). Names given or from the bundle must match the
            ``dataset.json`` ``labels`` when it has them (count, and names case-insensitively).
        sections: datalist sections to read (a missing ``validation`` section is simply empty).
        spatial_dims: 2 reads labels as the 2D chains do (PNG/TIFF/``.npy``/NIfTI, colours mapped); None: the
            bundle's, else any 2D/3D label through nibabel/MONAI.
        label_colors, channel_dim, color_tolerance: 2D, as in :func:`pipeline.transforms.chains.train_transforms`;
            None: the bundle's. Without ``label_colors`` anywhere, those of ``dataset.json`` are used (with a note).
        overrides: bundle id overrides (as ``--set``), e.g. ``{"label_colors": {...}}``.

    Returns:
        The report, with :attr:`AuditReport.recommendation` filled by :func:`recommend`.

    Raises:
        ClassNamesError: the class names given or the bundle's differ from the ``dataset.json`` ``labels``.
    """
    given: dict[str, Any] = {"spatial_dims": spatial_dims, "label_colors": label_colors, "channel_dim": channel_dim}
    given["color_tolerance"] = color_tolerance
    reading, notes = _reading_settings(dataset_dir, bundle, given, overrides)
    source = "argument"
    if class_names is None and bundle is not None:
        class_names, source = _bundle_classes(bundle, overrides)
    if class_names is not None:
        names = [class_names[k] for k in sorted(class_names)]
        problem = class_names_problem(dataset_dir, names, source, bundle)
        if problem is not None:
            raise ClassNamesError(str(problem))
    if class_names is None:
        class_names, source = class_names_from_dataset(dataset_dir), f"{Path(dataset_dir) / 'dataset.json'} labels"
    items = [it for s in sections for it in load_datalist(dataset_dir, s) if it.get("label")]
    if not items:
        raise ValueError(f"No labelled cases in sections {list(sections)} of {str(dataset_dir)!r}.")
    declared = set(class_names) if class_names else None
    reader = None
    if reading.get("spatial_dims") == 2:
        reader = CaseReader(
            2,
            label_colors=reading.get("label_colors"),
            channel_dim=reading.get("channel_dim", "auto"),
            color_tolerance=reading.get("color_tolerance", 0),
            num_classes=max(class_names) + 1 if class_names else None,
        )
    cases = [_audit_case(it, declared, reader) for it in items]
    if not class_names:
        found = sorted({v for c in cases for v in c.voxels if v >= 0})
        class_names, source = {v: f"class_{v}" for v in found}, "label values found"
        notes.append(f"No class names declared (no --bundle, no dataset.json labels); using values found: {found}.")
    read = [c for c in cases if c.shape]
    classes = []
    total = sum(c.total for c in read)
    for k, name in sorted(class_names.items()):
        n = sum(c.voxels.get(k, 0) for c in read)
        comps = [(c.components[k], c) for c in read if k in c.components]
        row: dict[str, Any] = {
            "index": k,
            "name": name,
            "voxels": n,
            "fraction": n / total if total else 0.0,
            "cases_present": sum(c.voxels.get(k, 0) > 0 for c in read),
            "cases_absent": [c.case for c in read if c.voxels.get(k, 0) == 0],
            "structures": sum(cc[0] for cc, _ in comps),
        }
        for key, pos in (("smallest", 1), ("largest", 2)):
            if comps:
                pick = min if key == "smallest" else max
                cc, c = pick(comps, key=lambda x: x[0][pos] * x[1].voxel_size)
                row[key] = {"voxels": cc[pos], "mm3" if len(c.shape) == 3 else "mm2": cc[pos] * c.voxel_size}
                row[key]["case"] = c.case
        classes.append(row)
    geometry: dict[str, Any] = {}
    if read:
        dims = max(len(c.shape) for c in read)
        same = [c for c in read if len(c.shape) == dims]
        geometry = {
            "spacing": [_stats([c.spacing[i] for c in same]) for i in range(dims)],
            "shape": [_stats([c.shape[i] for c in same]) for i in range(dims)],
            "axcodes": dict(Counter(c.axcodes for c in read)),
        }
    errors = [e for c in cases for e in c.errors]
    report = AuditReport(str(dataset_dir), dict(class_names), source, cases, classes, geometry, errors, notes)
    report.recommendation = recommend(report)
    return report


def recommend(report: AuditReport) -> Recommendation:
    """Sampling ratios and CE weights from the class frequencies, with the reasoning.

    - ``ratios``: background 1; a foreground class ``c`` gets ``min(4, sqrt(f_ref / f_c))`` (``f`` = voxel
      fraction, ``f_ref`` = most frequent foreground class) divided by the fraction of cases that contain it (its
      ratio is dropped in the other cases), capped at 10; a class absent everywhere gets 0.
    - ``ce_weight``: ``min(10, sqrt(f_max / f_c))``, normalised to mean 1 over present classes, 0 when absent.
      Deliberately mild: the sampler already oversamples rare classes, and MONAI's DiceCELoss applies the same
      weights to its Dice terms.
    """
    rows = report.classes
    n = max(1, sum(1 for c in report.cases if c.shape))
    reasons: list[str] = []
    present = [r for r in rows if r["voxels"] > 0]
    fg = [r for r in present if r["index"] != 0]
    f_ref = max((r["fraction"] for r in fg), default=1.0)
    ratios: list[float] = []
    for r in rows:
        name, f, p = r["name"], r["fraction"], r["cases_present"] / n
        if r["voxels"] == 0:
            ratios.append(0.0)
            reasons.append(f"{name}: absent from every case -> ratio 0 and ce_weight 0 (no patch can centre on it).")
        elif r["index"] == 0:
            ratios.append(1.0)
        else:
            boost = min(MAX_BOOST, math.sqrt(f_ref / f))
            ratio = round(min(MAX_RATIO, boost / p), 2)
            ratios.append(ratio)
            reasons.append(
                f"{name}: {100 * f:.3g}% of voxels, in {r['cases_present']}/{n} cases -> boost "
                f"min({MAX_BOOST:g}, sqrt({100 * f_ref:.3g}%/{100 * f:.3g}%)) = {boost:.2f}, / presence {p:.2f} "
                f"-> ratio {ratio:g}."
            )
    share = np.zeros(len(rows))
    for c in report.cases:
        if not c.shape:
            continue
        eff = np.array(
            [ratio if c.voxels.get(r["index"], 0) > 0 else 0.0 for ratio, r in zip(ratios, rows, strict=True)]
        )
        share += eff / eff.sum() if eff.sum() > 0 else np.eye(len(rows))[0]
    share = share / n
    reasons.append(
        "background ratio 1 keeps far-field negatives in the patches; with these ratios the share of patch centres "
        "per class over the dataset is "
        + ", ".join(f"{r['name']} {100 * s:.0f}%" for r, s in zip(rows, share, strict=True))
        + "."
    )
    f_max = max((r["fraction"] for r in present), default=1.0)
    raw = [min(MAX_CE_RATIO, math.sqrt(f_max / r["fraction"])) if r["voxels"] else 0.0 for r in rows]
    mean = float(np.mean([w for w in raw if w > 0])) if present else 1.0
    weights = [round(w / mean, 3) for w in raw]
    reasons.append(
        f"ce_weight = min({MAX_CE_RATIO:g}, sqrt(f_max/f)), normalised to mean 1 over present classes: mild on "
        "purpose, because the sampler already oversamples rare classes; DiceCELoss also weights Dice terms with it."
    )
    fg_frac = sum(r["fraction"] for r in fg)
    reasons.append(
        f"posneg alternative: pos=1, neg=1 puts half of the centres on foreground ({100 * fg_frac:.3g}% of voxels) "
        "but treats all foreground classes as one; prefer 'classes' when foreground classes differ in frequency."
    )
    for r in fg:
        if r.get("smallest") and r["smallest"]["voxels"] < TINY_STRUCTURE:
            reasons.append(
                f"{r['name']}: smallest structure is {r['smallest']['voxels']} voxels ({r['smallest']['case']}); "
                "check that the bundle's 'pixdim' does not shrink it to nothing."
            )
    return Recommendation("classes", ratios, 1.0, 1.0, weights, [round(float(s), 4) for s in share], reasons)


def override_config(rec: Recommendation) -> dict[str, Any]:
    """Bundle override (``--args_file FILE`` or an extra ``--config_file`` entry): sampling, ratios, ce_weight."""
    return {"sampling": rec.sampling, "ratios": rec.ratios, "ce_weight": rec.ce_weight}


def _fmt_size(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    unit = "mm3" if "mm3" in d else "mm2"
    return f"{d['voxels']} vox / {d[unit]:.4g} {unit} ({d['case']})"


def audit_markdown(report: AuditReport, per_case: bool = True) -> str:
    """The audit as a readable markdown document (classes, geometry, problems, recommendation, cases)."""
    n = len(report.cases)
    rec = report.recommendation
    lines = [f"# Dataset audit: {report.dataset_dir}", "", f"{n} cases; classes from {report.class_source}.", ""]
    lines += ["| class | voxel fraction | cases with it | absent in | structures | smallest | largest |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for r in report.classes:
        absent = ", ".join(r["cases_absent"][:5]) + (" ..." if len(r["cases_absent"]) > 5 else "")
        structures = r["structures"] if r["index"] else "-"
        lines.append(
            f"| {r['index']} {r['name']} | {100 * r['fraction']:.4g}% | {r['cases_present']}/{n} | {absent or '-'} "
            f"| {structures} | {_fmt_size(r.get('smallest'))} | {_fmt_size(r.get('largest'))} |"
        )
    g = report.geometry
    if g:
        fmt = " x ".join
        lines += ["", "## Geometry", ""]
        for key, unit in (("spacing", " mm"), ("shape", "")):
            for stat in ("min", "median", "max"):
                lines.append(f"- {key} {stat}: {fmt(f'{a[stat]:g}' for a in g[key])}{unit}")
        lines.append("- orientation: " + ", ".join(f"{k} x{v}" for k, v in g["axcodes"].items()))
    lines += ["", f"## Problems ({len(report.errors)})", ""]
    lines += [f"- {e}" for e in report.errors + report.notes] or ["- none"]
    if rec is not None:
        lines += ["", "## Recommendation", ""]
        lines.append(f"- sampling `{rec.sampling}`, ratios `{rec.ratios}`; ce_weight `{rec.ce_weight}`")
        lines += [f"- {r}" for r in rec.reasons]
        lines += ["", "Bundle override (`--write-override FILE`, then `--args_file FILE`):", "", "```json"]
        lines += [json.dumps(override_config(rec)), "```"]
    if per_case:
        names = [report.class_names[k] for k in sorted(report.class_names)]
        lines += ["", "## Cases", "", "| case | shape | spacing | axcodes | " + " | ".join(names) + " | problems |"]
        lines.append("|---" * (len(names) + 5) + "|")
        for c in report.cases:
            fr = [f"{100 * c.voxels.get(k, 0) / c.total:.3g}%" if c.total else "-" for k in sorted(report.class_names)]
            sp = "x".join(f"{s:g}" for s in c.spacing)
            shape = "x".join(map(str, c.shape))
            lines.append(f"| {c.case} | {shape} | {sp} | {c.axcodes} | " + " | ".join(fr) + f" | {len(c.errors)} |")
    return "\n".join(lines) + "\n"


def plot_audit(report: AuditReport, path: str | Path) -> Path:
    """Class voxel fractions (log scale) and the per-case presence matrix, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report.classes]
    fracs = [max(r["fraction"], 1e-9) for r in report.classes]
    cases = report.cases
    presence = np.array([[float(c.voxels.get(r["index"], 0) > 0) for c in cases] for r in report.classes])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + min(0.25 * len(cases), 14), 3 + 0.3 * len(names)))
    ax1.bar(names, fracs, color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("voxel fraction (log)")
    ax1.set_title("class frequency")
    for i, f in enumerate(fracs):
        ax1.text(i, f, f"{100 * f:.2g}%", ha="center", va="bottom", fontsize=8)
    cmap = matplotlib.colors.ListedColormap(["#f2b8b5", "#2e8b57"])
    ax2.imshow(presence, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax2.set_yticks(range(len(names)), names)
    step = max(1, len(cases) // 30)
    ax2.set_xticks(range(0, len(cases), step), [c.case for c in cases][::step], rotation=90, fontsize=7)
    ax2.set_title("class present (green) / absent (red) per case")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_audit(report: AuditReport, out_dir: str | Path) -> dict[str, Path]:
    """Write ``audit.json``, ``audit.md`` and ``audit.png`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "audit.json", "md": out / "audit.md", "png": out / "audit.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    paths["md"].write_text(audit_markdown(report))
    plot_audit(report, paths["png"])
    return paths

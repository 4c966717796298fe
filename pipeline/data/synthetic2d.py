"""Deterministic two-site 2D "microscopy" of a two-phase material, with pores: the 2D story in synthetic form.

Each image shows grains of phase 1 (``grain``, each grain with its own brightness, as orientation contrast gives)
in a matrix of phase 0 (``matrix``), and small dark pores (``pore``, ~2-3 % of the area: the minority class). Two
"sites" differ the way two labs do:

- **site A**: large images (256 × 256), 8-bit PNG, grain fraction 25-35 %, clean and sharp.
- **site B**: small images (128 × 100, not a multiple of 32), 16-bit PNG (a 12-bit camera), the grain fraction has
  drifted to 40-55 %, lower grain/matrix contrast, more noise, more blur and uneven illumination.

Labels are index-mask PNGs (0 matrix, 1 grain, 2 pore) or, with ``label_format="rgb"``, RGB-coded PNGs using
:data:`LABEL_COLORS_2D` (the colours are then written into ``dataset.json`` as ``label_colors``). The 6-channel variant
(``channels=6``) renders the same scenes as multispectral ``(6, H, W)`` float32 ``.npy`` stacks in which each phase has
its own spectrum (site B: other band gains).

Layout (``make_dataset_2d(out)``)::

    out/site_A/{imagesTr,labelsTr,imagesTs,labelsTs}/caseA_000.png, out/site_A/dataset.json
    out/site_B/..., out/site_A_6ch/imagesTr/caseA_000.npy, out/site_B_6ch/...
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

__all__ = [
    "CLASS_NAMES_2D",
    "LABEL_COLORS_2D",
    "N_BANDS",
    "SITES_2D",
    "Site2DSpec",
    "make_case_2d",
    "make_dataset_2d",
    "make_site_2d",
]

logger = logging.getLogger(__name__)

CLASS_NAMES_2D: dict[int, str] = {0: "matrix", 1: "grain", 2: "pore"}
LABEL_COLORS_2D: dict[int, tuple[int, int, int]] = {0: (0, 0, 0), 1: (255, 0, 0), 2: (0, 0, 255)}
N_BANDS = 6
_SPECTRA = np.array(  # phase x band reflectance: matrix flat, grain rising towards the last bands, pores dark
    [[0.20, 0.25, 0.30, 0.35, 0.30, 0.25], [0.30, 0.30, 0.45, 0.60, 0.70, 0.75], [0.05, 0.05, 0.06, 0.06, 0.05, 0.05]]
)


@dataclass(frozen=True)
class Site2DSpec:
    """How a site images the material.

    Attributes:
        name: site letter used in case ids.
        shape: image size ``(H, W)`` in pixels.
        grain_fraction: range of the grain (phase 1) area fraction, drawn per image.
        grain_radius: range of grain radii in pixels.
        pore_fraction: pore area fraction.
        intensities: grey level of matrix, grain, pore in [0, 1] of the detector range.
        bit_depth: 8 (uint8 PNG) or 12 (uint16 PNG, values 0..4095).
        noise: Gaussian noise std, in [0, 1] units.
        blur: optical blur (Gaussian sigma, pixels).
        shading: amplitude of a left-to-right illumination gradient (0 = even).
        band_gain: per-band gain of the multispectral sensor.
    """

    name: str
    shape: tuple[int, int]
    grain_fraction: tuple[float, float]
    grain_radius: tuple[float, float]
    pore_fraction: float
    intensities: tuple[float, float, float]
    bit_depth: int
    noise: float
    blur: float
    shading: float
    band_gain: tuple[float, ...]


SITES_2D: dict[str, Site2DSpec] = {
    "A": Site2DSpec(
        "A", (256, 256), (0.25, 0.35), (5.0, 11.0), 0.02, (0.25, 0.70, 0.05), 8, 0.04, 0.6, 0.0, (1.0,) * N_BANDS
    ),
    "B": Site2DSpec(
        "B", (128, 100), (0.40, 0.55), (4.0, 9.0), 0.03, (0.40, 0.62, 0.15), 12, 0.07, 1.1, 0.25,
        (1.1, 0.9, 1.0, 1.2, 0.8, 1.0),
    ),
}  # fmt: skip


def _scatter_blobs(
    rng: np.random.Generator,
    shape: tuple[int, int],
    fraction: float,
    radius: tuple[float, float],
    out: np.ndarray,
    value_of: np.ndarray | None = None,
    values: tuple[float, float] = (0.0, 0.0),
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """Draw random ellipses until ``fraction`` of the image is covered; returns the coverage mask.

    ``value_of`` (float image) gets one random value in ``values`` per ellipse (per-grain brightness).
    ``allowed`` restricts the new area (pores stay off the grain interiors they would split).
    """
    h, w = shape
    covered = np.zeros(shape, dtype=bool)
    target = fraction * h * w
    for _ in range(20_000):
        if covered.sum() >= target:
            break
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = r * rng.uniform(0.6, 1.0), r
        theta = rng.uniform(0, np.pi)
        y0, y1 = max(0, int(cy - r) - 1), min(h, int(cy + r) + 2)
        x0, x1 = max(0, int(cx - r) - 1), min(w, int(cx + r) + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
        blob = (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
        if allowed is not None:
            blob &= allowed[y0:y1, x0:x1]
        covered[y0:y1, x0:x1] |= blob
        out[y0:y1, x0:x1][blob] = True
        if value_of is not None:
            value_of[y0:y1, x0:x1][blob] = rng.uniform(*values)
    return covered


def make_case_2d(spec: Site2DSpec, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render one image.

    Args:
        spec: the site's imaging.
        seed: scene and noise seed.
        channels: 1 (grey, stored at ``spec.bit_depth``) or :data:`N_BANDS` (multispectral float32).

    Returns:
        ``(image, label)``: image ``(H, W)`` uint8/uint16, or ``(6, H, W)`` float32; label ``(H, W)`` uint8 in
        {0 matrix, 1 grain, 2 pore}.
    """
    if channels not in (1, N_BANDS):
        raise ValueError(f"'channels' must be 1 or {N_BANDS}, got {channels!r}.")
    rng = np.random.default_rng(seed)
    h, w = spec.shape
    grain = np.zeros(spec.shape, dtype=bool)
    brightness = np.zeros(spec.shape, dtype=np.float32)
    fraction = rng.uniform(*spec.grain_fraction)
    _scatter_blobs(rng, spec.shape, fraction, spec.grain_radius, grain, brightness, (-0.06, 0.06))
    pore = np.zeros(spec.shape, dtype=bool)
    _scatter_blobs(rng, spec.shape, spec.pore_fraction, (2.0, 4.0), pore)
    label = np.zeros(spec.shape, dtype=np.uint8)
    label[grain] = 1
    label[pore] = 2
    shading = 1.0 + spec.shading * (np.arange(w, dtype=np.float32)[None, :] / max(w - 1, 1) - 0.5)
    if channels == 1:
        levels = np.asarray(spec.intensities, dtype=np.float32)
        bands = (levels[label] + np.where(label == 1, brightness, 0.0))[None]
    else:
        spectra = (_SPECTRA * np.asarray(spec.band_gain)[None, :]).astype(np.float32)  # phase x band
        bands = np.moveaxis(spectra[label], -1, 0) + 0.5 * np.where(label == 1, brightness, 0.0)[None]
    bands = np.stack([gaussian_filter(b * shading, spec.blur) for b in bands])
    bands += rng.normal(0.0, spec.noise, bands.shape).astype(np.float32)
    bands = np.clip(bands, 0.0, 1.0)
    if channels != 1:
        return bands.astype(np.float32), label
    top = 255 if spec.bit_depth == 8 else 2**spec.bit_depth - 1
    dtype = np.uint8 if spec.bit_depth == 8 else np.uint16
    return np.rint(bands[0] * top).astype(dtype), label


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(np.ascontiguousarray(array)).save(path, compress_level=1)


def make_site_2d(
    out_dir: str | Path,
    site: str = "A",
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    channels: int = 1,
    label_format: str = "index",
    seed: int = 0,
) -> Path:
    """Write one site's 2D dataset (images, labels, MSD-style ``dataset.json``) and return its folder.

    Args:
        out_dir: the site folder.
        site: ``"A"`` or ``"B"``.
        n_train, n_val, n_test: cases in ``training``, ``validation`` and ``test`` (test cases have labels).
        channels: 1 (PNG images) or 6 (``.npy`` ``(6, H, W)`` float32 stacks).
        label_format: ``"index"`` (grey PNG of class indices) or ``"rgb"`` (RGB PNG, :data:`LABEL_COLORS_2D`).
        seed: dataset seed; sites and cases get different scenes.
    """
    if site not in SITES_2D:
        raise ValueError(f"Unknown site {site!r}; available: {sorted(SITES_2D)}.")
    if label_format not in ("index", "rgb"):
        raise ValueError(f"'label_format' must be 'index' or 'rgb', got {label_format!r}.")
    if min(n_train, n_val, n_test) < 0 or n_train < 1:
        raise ValueError(f"Case counts must be >= 0 with n_train >= 1, got {n_train}, {n_val}, {n_test}.")
    spec = SITES_2D[site]
    root = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    colours = np.asarray([LABEL_COLORS_2D[c] for c in sorted(LABEL_COLORS_2D)], dtype=np.uint8)
    ext = ".png" if channels == 1 else ".npy"
    sections: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    i = 0
    for section, n in (("training", n_train), ("validation", n_val), ("test", n_test)):
        folder = "Ts" if section == "test" else "Tr"
        for _ in range(n):
            case = f"case{site}_{i:03d}"
            image, label = make_case_2d(spec, seed=seed * 1000 + i + 500 * (ord(site) - ord("A")), channels=channels)
            if channels == 1:
                _write_png(image, root / f"images{folder}" / f"{case}{ext}")
            else:
                np.save(root / f"images{folder}" / f"{case}{ext}", image)
            _write_png(colours[label] if label_format == "rgb" else label, root / f"labels{folder}" / f"{case}.png")
            sections[section].append(
                {"image": f"./images{folder}/{case}{ext}", "label": f"./labels{folder}/{case}.png"}
            )
            i += 1
    h, w = spec.shape
    modality = {"0": "microscopy"} if channels == 1 else {str(b): f"band{b + 1}" for b in range(channels)}
    meta = {
        "name": f"synthetic_microscopy_site_{site}" + ("" if channels == 1 else f"_{channels}ch"),
        "description": f"Synthetic two-phase microscopy with pores, site {site}: {h}x{w} px, "
        + (f"{spec.bit_depth}-bit grey PNG" if channels == 1 else f"{channels}-band float32 .npy (C, H, W)"),
        "tensorImageSize": "2D",
        "modality": modality,
        "labels": {str(k): v for k, v in CLASS_NAMES_2D.items()},
        **({"label_colors": {str(k): list(v) for k, v in LABEL_COLORS_2D.items()}} if label_format == "rgb" else {}),
        "numTraining": n_train + n_val,
        "numTest": n_test,
        **sections,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    logger.info("wrote %d 2D cases of site %s (%d channel(s)) to %s", i, site, channels, root)
    return root


def make_dataset_2d(
    out_dir: str | Path,
    site: str = "both",
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    channels: Sequence[int] = (1, N_BANDS),
    label_format: str = "index",
    seed: int = 0,
) -> Path:
    """Write site A and/or B under ``out_dir/site_<X>`` (grey PNG) and ``out_dir/site_<X>_6ch`` (6-band ``.npy``).

    Defaults follow the story: site A has a full training set of large images (8/2/2), site B a handful of small
    ones (3/1/3). Returns ``out_dir``.
    """
    sites = ["A", "B"] if site == "both" else [site]
    defaults = {"A": (8, 2, 2), "B": (3, 1, 3)}
    for s in sites:
        if s not in SITES_2D:
            raise ValueError(f"Unknown site {s!r}; expected 'A', 'B' or 'both'.")
        dt, dv, dte = defaults[s]
        for c in channels:
            make_site_2d(
                Path(out_dir) / (f"site_{s}" if c == 1 else f"site_{s}_{c}ch"),
                site=s,
                n_train=dt if n_train is None else n_train,
                n_val=dv if n_val is None else n_val,
                n_test=dte if n_test is None else n_test,
                channels=c,
                label_format=label_format,
                seed=seed,
            )
    return Path(out_dir)

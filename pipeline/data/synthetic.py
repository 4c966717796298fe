"""Deterministic two-site phantoms with the shape of the real problem.

Every case holds three structures of very different size inside a body: a large ``organ`` (a few % of the
voxels), a thin ``vessel`` tube (~0.2 %) and a tiny ``lesion`` (~0.01 %, absent in some cases). The anatomy
is defined in millimetres, so the same case can be rendered by two "sites" that differ in contrast, voxel
spacing and orientation (site A: RAS, CT-like; site B: LPS, MR-like with a bias field and the lesion brighter
than the organ instead of darker). Noise is per site.

Output layout (``make_dataset(out, site="both")``)::

    out/site_A/{imagesTr,labelsTr,imagesTs,labelsTs}/caseA_000.nii.gz, out/site_A/dataset.json
    out/site_B/...

``dataset.json`` is MSD-style (``labels``, ``training``, ``validation``, ``test``; paths relative).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["CLASS_NAMES", "SITES", "SiteSpec", "make_case", "make_dataset", "make_site"]

logger = logging.getLogger(__name__)

CLASS_NAMES: dict[int, str] = {0: "background", 1: "organ", 2: "vessel", 3: "lesion"}


@dataclass(frozen=True)
class SiteSpec:
    """How a site renders a phantom.

    Attributes:
        name: site letter used in case ids.
        spacing: voxel size in mm, per spatial axis.
        shape: volume size in voxels (3D); 2D uses the first two entries.
        flip_xy: store in LPS instead of RAS (first two axes reversed in the affine).
        intensities: value per structure: air, tissue, organ, vessel, lesion.
        noise: Gaussian noise std, in intensity units.
        bias: amplitude of a smooth multiplicative bias field (0 = none).
    """

    name: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    flip_xy: bool
    intensities: tuple[float, float, float, float, float]
    noise: float
    bias: float


SITES: dict[str, SiteSpec] = {
    "A": SiteSpec("A", (1.5, 1.5, 2.0), (96, 96, 48), False, (-1000.0, 40.0, 110.0, 220.0, 70.0), 20.0, 0.0),
    "B": SiteSpec("B", (1.2, 1.2, 2.5), (120, 120, 38), True, (0.0, 300.0, 520.0, 820.0, 700.0), 40.0, 0.25),
}

_LESION_PROBABILITY = 0.7


def _affine(spec: SiteSpec, dims: int) -> np.ndarray:
    """Voxel → world (RAS mm) affine with the field of view centred on the origin."""
    spacing = np.array(spec.spacing[:dims], dtype=float)
    shape = np.array(spec.shape[:dims], dtype=float)
    signs = np.ones(dims)
    if spec.flip_xy:
        signs[:2] = -1.0
    affine = np.eye(4)
    for i in range(dims):
        affine[i, i] = signs[i] * spacing[i]
        affine[i, 3] = -signs[i] * spacing[i] * (shape[i] - 1) / 2.0
    return affine


def _world_grid(spec: SiteSpec, dims: int, affine: np.ndarray) -> list[np.ndarray]:
    idx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in spec.shape[:dims]], indexing="ij")
    return [affine[i, i] * idx[i] + affine[i, 3] for i in range(dims)]


@dataclass(frozen=True)
class _Anatomy:
    body_r: np.ndarray
    organ_c: np.ndarray
    organ_r: np.ndarray
    vessel_xy: np.ndarray
    vessel_r: float
    vessel_tilt: np.ndarray
    lesion: bool
    lesion_offset: np.ndarray
    lesion_r: float


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    """Random but site-independent anatomy of one case, in mm."""
    return _Anatomy(
        body_r=np.array([62.0, 52.0, 46.0]) * rng.uniform(0.9, 1.05),
        organ_c=np.array([-14.0, 6.0, 0.0]) + rng.uniform(-5, 5, 3),
        organ_r=np.array([28.0, 22.0, 20.0]) * rng.uniform(0.85, 1.15, 3),
        vessel_xy=np.array([18.0, -10.0]) + rng.uniform(-5, 5, 2),
        vessel_r=float(rng.uniform(3.2, 4.5)),
        vessel_tilt=rng.uniform(-0.15, 0.15, 2),
        lesion=bool(rng.uniform() < _LESION_PROBABILITY),
        lesion_offset=rng.uniform(-0.45, 0.45, 3),
        lesion_r=float(rng.uniform(3.5, 5.5)),
    )


def make_case(spec: SiteSpec, seed: int, dims: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one case.

    Args:
        spec: the site's rendering.
        seed: anatomy and noise seed; the same seed gives the same anatomy at every site.
        dims: 3 for volumes, 2 for a single axial slice through the structures.

    Returns:
        ``(image float32, label uint8, affine 4x4)``; arrays have shape ``spec.shape[:dims]``.
    """
    if dims not in (2, 3):
        raise ValueError(f"'dims' must be 2 or 3, got {dims!r}.")
    a = _anatomy(np.random.default_rng(seed))
    affine = _affine(spec, dims)
    grid = _world_grid(spec, dims, affine)
    x, y = grid[0], grid[1]
    z = grid[2] if dims == 3 else np.zeros_like(x)
    pos = [x, y, z]

    def ellipsoid(center: np.ndarray, radii: np.ndarray) -> np.ndarray:
        return sum(((p - c) / r) ** 2 for p, c, r in zip(pos, center, radii, strict=True)) <= 1.0

    body = ellipsoid(np.zeros(3), a.body_r)
    organ = ellipsoid(a.organ_c, a.organ_r) & body
    vx, vy = a.vessel_xy
    tx, ty = a.vessel_tilt
    vessel = (((x - vx - tx * z) ** 2 + (y - vy - ty * z) ** 2) <= a.vessel_r**2) & body
    label = np.zeros(x.shape, dtype=np.uint8)
    label[organ] = 1
    label[vessel] = 2
    if a.lesion:
        c = a.organ_c + a.lesion_offset * a.organ_r
        if dims == 2:
            c = np.array([c[0], c[1], 0.0])
        r = a.lesion_r
        label[ellipsoid(c, np.array([r, r, r])) & organ] = 3

    air, tissue, *structures = spec.intensities
    image = np.full(x.shape, air, dtype=np.float32)
    image[body] = tissue
    for cls, value in enumerate(structures, start=1):
        image[label == cls] = value
    rng = np.random.default_rng(seed + 100_003 * (ord(spec.name) + 1))
    if spec.bias:
        field = 1.0 + spec.bias * np.sin(x / 40.0 + rng.uniform(0, 3)) * np.cos(y / 55.0)
        image = np.where(body, image * field, image).astype(np.float32)
    image += rng.normal(0.0, spec.noise, x.shape).astype(np.float32)
    return image.astype(np.float32), label, affine


def _save(arr: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def make_site(
    out_dir: str | Path,
    site: str = "A",
    n_train: int = 8,
    n_val: int = 2,
    n_test: int = 2,
    dims: int = 3,
    seed: int = 0,
) -> Path:
    """Write one site's dataset (NIfTI + MSD ``dataset.json``) and return its folder.

    Cases are split into ``training`` (``n_train``), ``validation`` (``n_val``) and ``test`` (``n_test``, with
    labels so they can be evaluated). Seeds differ per site so the sites hold different patients.
    """
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}; available: {sorted(SITES)}.")
    if min(n_train, n_val, n_test) < 0 or n_train < 1:
        raise ValueError(f"Case counts must be >= 0 with n_train >= 1, got {n_train}, {n_val}, {n_test}.")
    spec = SITES[site]
    root = Path(out_dir)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sections: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": []}
    counts = [("training", n_train), ("validation", n_val), ("test", n_test)]
    i = 0
    for section, n in counts:
        folder = "Ts" if section == "test" else "Tr"
        for _ in range(n):
            case = f"case{site}_{i:03d}"
            image, label, affine = make_case(spec, seed=seed * 1000 + i + 500 * (ord(site) - ord("A")), dims=dims)
            _save(image, affine, root / f"images{folder}" / f"{case}.nii.gz")
            _save(label, affine, root / f"labels{folder}" / f"{case}.nii.gz")
            sections[section].append(
                {"image": f"./images{folder}/{case}.nii.gz", "label": f"./labels{folder}/{case}.nii.gz"}
            )
            i += 1
    meta = {
        "name": f"synthetic_site_{site}",
        "description": f"Synthetic {dims}D phantoms, site {site} (spacing {spec.spacing[:dims]} mm, "
        f"{'LPS' if spec.flip_xy else 'RAS'}).",
        "tensorImageSize": f"{dims}D",
        "modality": {"0": "CT" if site == "A" else "MR"},
        "labels": {str(k): v for k, v in CLASS_NAMES.items()},
        "numTraining": n_train + n_val,
        "numTest": n_test,
        **sections,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    logger.info("wrote %d cases of site %s (%dD) to %s", i, site, dims, root)
    return root


def make_dataset(
    out_dir: str | Path,
    dims: int = 3,
    site: str = "both",
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
) -> Path:
    """Write site A and/or B under ``out_dir/site_<X>``; return ``out_dir``.

    Defaults follow the story: site A has a full training set (8/2/2), site B a handful (3/1/2).
    """
    sites = ["A", "B"] if site == "both" else [site]
    defaults = {"A": (8, 2, 2), "B": (3, 1, 2)}
    for s in sites:
        if s not in SITES:
            raise ValueError(f"Unknown site {s!r}; expected 'A', 'B' or 'both'.")
        dt, dv, dte = defaults[s]
        make_site(
            Path(out_dir) / f"site_{s}",
            site=s,
            n_train=dt if n_train is None else n_train,
            n_val=dv if n_val is None else n_val,
            n_test=dte if n_test is None else n_test,
            dims=dims,
            seed=seed,
        )
    return Path(out_dir)

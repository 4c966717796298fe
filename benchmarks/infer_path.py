"""Benchmark of the whole batch-inference path (``python -m pipeline bench infer_path``).

``infer`` in :mod:`benchmarks.speed` times the sliding-window inferer on a tensor already in memory. This one
times what a site runs overnight: the bundle's own :class:`pipeline.inference.engine.BatchInference`
(:func:`pipeline.inference.bundle.from_bundle`, built as ``python -m pipeline infer --bundle`` and the bundle's
``inferring`` build it) over a folder of NIfTI volumes — read, resample, normalise, sliding window, invert to the
input grid, argmax, gzip, atomic write, with its loader and writer threads — against the bare network forward over
exactly the windows that run fed it (shapes recorded during the run, replayed afterwards on random tensors in the
same process).

Rows: ``infer_path`` with the whole path's wall seconds per volume vs the bare forward, ratio (target <= 1.25).
The JSON also keeps the forward time measured inside the run and the per-stage sums from ``summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import nn

from benchmarks.harness import BenchResult, register

__all__ = ["TimedNetwork", "infer_path_benchmark", "write_volumes"]

TARGET = 1.25
DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "transfer_3d_segmentation"


class TimedNetwork(nn.Module):
    """Wraps a network; records each forward's input shape and its seconds (synchronised on CUDA)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.shapes: list[tuple[int, ...]] = []
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        y = self.network(x)
        if y.is_cuda:
            torch.cuda.synchronize(y.device)
        self.seconds += time.perf_counter() - start
        self.shapes.append(tuple(x.shape))
        return y


def write_volumes(folder: Path, n: int, shape: Sequence[int], spacing: Sequence[float], seed: int = 0) -> list[Path]:
    """``n`` CT-like int16 NIfTI volumes (a bright ellipsoid in noise, HU-ish values) of ``shape`` at ``spacing``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    paths = []
    for i in range(n):
        inside = (((grid - rng.uniform(-0.2, 0.2, (3, 1, 1, 1))) / 0.5) ** 2).sum(0) < 1
        data = np.where(inside, 60, -900) + rng.normal(0, 20, shape)
        path = folder / f"vol_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([*spacing, 1.0])), path)
        paths.append(path)
    return paths


def _bare_forward(network: nn.Module, shapes: list[tuple[int, ...]], device: torch.device, amp: bool) -> float:
    """Seconds for the forward passes over ``shapes`` (random inputs), as the engine runs them."""
    inputs = [torch.rand(s, device=device) for s in shapes]
    ctx = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        start = time.perf_counter()
        for x in inputs:
            network(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter() - start


def infer_path_benchmark(
    bundle: Path = DEFAULT_BUNDLE,
    volumes: int = 3,
    shape: Sequence[int] = (160, 160, 80),
    spacing: Sequence[float] = (0.9, 0.9, 1.5),
    repeats: int = 3,
    device: str | None = None,
    work: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds per volume of ``BatchInference.run`` vs the bare forward over the same windows.

    Args:
        bundle: bundle folder with ``configs/inference.json`` (random weights are used: timing only).
        volumes: volumes per run.
        shape: voxels per volume.
        spacing: their spacing in mm (the bundle resamples to its ``pixdim``).
        repeats: timed runs (each with ``overwrite=True``) after one untimed warm-up run; figures are medians.
        device: ``cpu``/``cuda``; None: CUDA when present.
        work: folder for the volumes and outputs (default: a temp folder, removed afterwards).
        overrides: bundle ids over the bundle's values (``pixdim``, ``roi_size``, ``sw_batch_size``, ``sw_overlap``,
            ...), as :func:`pipeline.inference.bundle.from_bundle` takes them.

    Returns:
        ``{"s_per_volume": {"whole", "bare", "forward_in_run"}, "ratio", "windows_per_volume", ...}``.

    Raises:
        ValueError: ``volumes``/``repeats`` below 1 or ``shape``/``spacing`` not 3 entries.
    """
    from pipeline.inference.bundle import ENGINE_ID, from_bundle

    if volumes < 1 or repeats < 1:
        raise ValueError(f"'volumes' and 'repeats' must be >= 1, got {volumes} and {repeats}.")
    if len(shape) != 3 or len(spacing) != 3:
        raise ValueError(f"'shape' and 'spacing' must have 3 entries, got {list(shape)!r} and {list(spacing)!r}.")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(work) if work is not None else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        # no weights loaded: the network keeps its random initialisation (timing only)
        settings = {**(overrides or {}), f"{ENGINE_ID}#checkpoint": None, "progress": False, "overwrite": True}
        if device is not None:
            settings["device"] = device
        engine = from_bundle(bundle, overrides=settings)
        timed = TimedNetwork(engine.network)
        engine.network = timed
        write_volumes(root / "in", volumes, shape, spacing)
        whole, in_run, stages = [], [], []
        for r in range(repeats + 1):
            timed.shapes, timed.seconds = [], 0.0
            start = time.perf_counter()
            report = engine.run(root / "in", root / f"out{r}")
            elapsed = time.perf_counter() - start
            if report.failed:
                raise RuntimeError(f"inference failed during the benchmark: {report.failed[0]}")
            if r:
                whole.append(elapsed / volumes)
                in_run.append(timed.seconds / volumes)
                stages.append(_stage_sums(report.processed, volumes))
        shapes = list(timed.shapes)
        bare = [_bare_forward(timed.network, shapes, engine.device, engine.amp) / volumes for _ in range(repeats)]
    runs = {"whole": whole, "bare": bare, "forward_in_run": in_run}
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "s_per_volume": med,
        "ratio": med["whole"] / med["bare"],
        "runs": runs,
        "stage_seconds_per_volume": stages,
        "windows_per_volume": sum(s[0] for s in shapes) / volumes,
        "window_batch_shapes": sorted({str(list(s)) for s in shapes}),
        "volume": list(shape),
        "spacing": list(spacing),
        "device": str(engine.device),
        "amp": engine.amp,
    }


def _stage_sums(processed: list[dict[str, Any]], volumes: int) -> dict[str, float]:
    sums: dict[str, float] = {}
    for entry in processed:
        for k, v in entry.get("seconds", {}).items():
            sums[k] = sums.get(k, 0.0) + v / volumes
    return sums


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="bundle folder (default: the 3D bundle)")
    parser.add_argument("--volumes", type=int, default=3, help="volumes per run (default 3)")
    parser.add_argument("--volume", type=int, nargs=3, default=[160, 160, 80], help="voxels per volume")
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.9, 0.9, 1.5], help="mm (default 0.9 0.9 1.5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up run (default 3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: CUDA if present")


@register(
    "infer_path",
    help="whole batch-inference path (read, resample, infer, invert, write) vs bare forward: s/volume ratio",
    add_arguments=_args,
)
def bench_infer_path(args: argparse.Namespace) -> BenchResult:
    r = infer_path_benchmark(args.bundle, args.volumes, args.volume, args.spacing, args.repeats, args.device)
    s = r["s_per_volume"]
    row = {
        "benchmark": "infer_path",
        "ours": f"{s['whole']:.2f} s/volume whole path {r['volume']} @ {r['spacing']} mm",
        "reference": f"{s['bare']:.2f} s bare forward ({r['windows_per_volume']:.0f} windows; "
        f"{s['forward_in_run']:.2f} s inside the run)",
        "ratio": r["ratio"],
        "target": f"<= {TARGET:g}",
        "met": "yes" if r["ratio"] <= TARGET else "no",
    }
    return BenchResult("infer_path", rows=[row], details=r)

"""Benchmark harness: a registry of named benchmarks, their JSON results and rows in ``docs/benchmarks.md``.

Adding a benchmark takes one function and one decorator::

    def _my_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=10)

    @register("training", help="seconds per training step", add_arguments=_my_args)
    def bench_training(args: argparse.Namespace) -> BenchResult:
        ...
        return BenchResult("training", rows=[{"backbone": "resnet10", "s/step": 0.71}], details={...})

``python -m pipeline bench training --steps 10`` then runs it, writes ``<out>/training.json`` and appends its rows,
with the exact command and the machine, to the ``## training`` table of ``docs/benchmarks.md``. Benchmarks in
other modules register the same way; list those modules in :data:`BENCHMARK_MODULES` so the CLI imports them.

Registered here: ``sampling`` (uniform vs class-balanced patch sampling at equal steps, per-class Dice on held-out
cases; see ``docs/class-imbalance.md``). ``benchmarks.speed`` registers ``train_step``, ``data``, ``frozen``,
``infer``, ``all`` and ``malloc``, ``benchmarks.infer_path`` registers ``infer_path`` (ratios to the bare model; see
``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.bundle.overrides import parse_set_options
from pipeline.utils.atomic import write_text

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_MODULES",
    "Benchmark",
    "BenchResult",
    "append_to_doc",
    "load_benchmarks",
    "machine_description",
    "parse_arm",
    "register",
    "run_benchmark",
    "sampling_benchmark",
    "write_result",
]

logger = logging.getLogger(__name__)

BENCHMARK_MODULES: tuple[str, ...] = ("benchmarks.harness", "benchmarks.speed", "benchmarks.infer_path")
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@dataclass
class BenchResult:
    """What a benchmark measured: ``rows`` go to the docs table (same keys in every row), ``details`` to JSON."""

    name: str
    rows: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    machine: str = ""
    date: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: ``run(args) -> BenchResult`` with its own CLI arguments."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], BenchResult]
    add_arguments: Callable[[argparse.ArgumentParser], None]


BENCHMARKS: dict[str, Benchmark] = {}


def register(
    name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable[[argparse.Namespace], BenchResult]], Callable[[argparse.Namespace], BenchResult]]:
    """Decorator adding ``fn(args) -> BenchResult`` to :data:`BENCHMARKS` under ``name``."""

    def wrap(fn: Callable[[argparse.Namespace], BenchResult]) -> Callable[[argparse.Namespace], BenchResult]:
        if name in BENCHMARKS and BENCHMARKS[name].run is not fn:
            raise ValueError(f"Benchmark {name!r} is registered twice; pick another name.")
        BENCHMARKS[name] = Benchmark(name, help, fn, add_arguments or (lambda parser: None))
        return fn

    return wrap


def load_benchmarks() -> dict[str, Benchmark]:
    """Import :data:`BENCHMARK_MODULES` (which register themselves) and return the registry."""
    for module in BENCHMARK_MODULES:
        importlib.import_module(module)
    return BENCHMARKS


def machine_description() -> str:
    """CPU/GPU, cores, torch threads and load: what the docs need next to every figure."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load avg {load:.1f} at start"
    )


def run_benchmark(name: str, args: argparse.Namespace, command: str = "") -> BenchResult:
    """Run a registered benchmark, stamping command, machine, date and wall time."""
    registry = load_benchmarks()
    if name not in registry:
        raise ValueError(f"Unknown benchmark {name!r}; available: {sorted(registry)}.")
    machine, start = machine_description(), time.perf_counter()
    result = registry[name].run(args)
    result.command, result.machine = command or result.command, machine
    result.date, result.wall_s = time.strftime("%Y-%m-%d %H:%M"), time.perf_counter() - start
    return result


def write_result(result: BenchResult, out_dir: str | Path) -> Path:
    """``<out_dir>/<name>.json`` with everything in the result."""
    path = Path(out_dir) / f"{result.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(asdict(result), indent=2, default=str) + "\n")
    return path


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "–" if np.isnan(v) else f"{v:.3g}"
    return "–" if v is None else str(v).replace("|", "\\|")


def append_to_doc(result: BenchResult, doc: str | Path = DOC) -> Path:
    """Append the result's rows (plus date, wall time, machine, command) to the ``## <name>`` table of ``doc``.

    A missing file or section is created; a section whose last table has other columns gets a new table.
    """
    doc = Path(doc)
    cols = ["date", *result.rows[0], "wall (s)", "machine", "command"] if result.rows else []
    header = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    rows = [
        "| " + " | ".join([result.date, *map(_cell, r.values()), f"{result.wall_s:.0f}", result.machine]) + " | "
        f"`{result.command}` |"
        for r in result.rows
    ]
    lines = doc.read_text().splitlines() if doc.is_file() else ["# Benchmarks", ""]
    title = f"## {result.name}"
    if title not in lines:
        lines += ([""] if lines and lines[-1] else []) + [title, "", *header, *rows]
    else:
        start = lines.index(title) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
        tables = [i for i in range(start, end) if lines[i].startswith("| ")]
        last = tables[-1] if tables else None
        first = last
        while first is not None and first - 1 >= start and lines[first - 1].startswith("|"):
            first -= 1
        if first is not None and lines[first] == header[0]:
            lines[last + 1 : last + 1] = rows  # type: ignore[operator]
        else:
            lines[end:end] = ["", *header, *rows, ""]
    return write_text(doc, "\n".join(lines).rstrip("\n") + "\n")


def parse_arm(spec: str) -> dict[str, Any]:
    """Sampling arm -> bundle overrides: ``uniform``, ``classes`` (bundle ratios), ``classes:1,1,2,4``,
    ``posneg:1,1`` (pos, neg)."""
    mode, _, values = spec.partition(":")
    try:
        nums = [float(v) for v in values.split(",")] if values else []
    except ValueError as e:
        raise ValueError(f"Bad arm {spec!r}: values must be numbers, e.g. 'classes:1,1,2,4'.") from e
    if mode == "uniform" and not nums:
        return {"sampling": "uniform"}
    if mode == "classes":
        return {"sampling": "classes", **({"ratios": nums} if nums else {})}
    if mode == "posneg" and len(nums) in (0, 2):
        return {"sampling": "posneg", **({"pos": nums[0], "neg": nums[1]} if nums else {})}
    raise ValueError(f"Bad arm {spec!r}; expected 'uniform', 'classes[:r0,r1,...]' or 'posneg[:pos,neg]'.")


def sampling_benchmark(
    dataset_dir: str | Path,
    bundle: str | Path,
    arms: Sequence[str] = ("uniform", "classes"),
    steps: int = 400,
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, Any] | None = None,
    eval_section: str = "test",
    eval_every: int | None = None,
) -> dict[str, Any]:
    """Train the bundle's setup once per arm and seed for ``steps`` steps on every ``training`` case of
    ``dataset_dir``; score ``eval_section`` cases with :func:`pipeline.evaluation.metrics.case_metrics` every
    ``eval_every``
    steps (None: at the end only). Reported Dice: per class, mean over cases (``both_empty`` excluded), at the end.

    Returns:
        ``{"arms": {arm: {"dice": {class: mean over seeds}, "dice_std", "missed": {class: count}, "fp_only",
        "patch_share": {class: fraction of patches containing it}, "curve": {step: {class: mean Dice}},
        "seconds"}}, "per_run": [...], ...}``.
    """
    from pipeline.apps.overfit import predict, train_steps
    from pipeline.bundle.config import open_bundle
    from pipeline.data.datalist import case_id, load_datalist
    from pipeline.evaluation.cases import spacing_of
    from pipeline.evaluation.metrics import case_metrics, summarize

    train_items, eval_items = load_datalist(dataset_dir, "training"), load_datalist(dataset_dir, eval_section)
    if not eval_items:
        raise ValueError(f"No {eval_section!r} cases in {str(dataset_dir)!r} to evaluate on; pass --eval-section.")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for arm in arms:
            from monai.utils import set_determinism

            start = time.perf_counter()
            set_determinism(seed=seed)
            parser = open_bundle(bundle, "train.json", {**(overrides or {}), **parse_arm(arm)}, dataset_dir)
            parser["train#datalist"], parser["validate#datalist"] = train_items, eval_items
            names = {i: str(n) for i, n in enumerate(parser.get_parsed_content("class_names"))}
            device = parser.get_parsed_content("device")
            network = parser.get_parsed_content("network")
            seen = np.zeros(len(names))

            def count(batch: Mapping[str, Any], seen: np.ndarray = seen) -> None:
                lab = torch.as_tensor(batch["label"]).flatten(1)
                seen[:] += [float((lab == c).any(1).sum()) / lab.shape[0] for c in range(len(seen))]

            loss_fn, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
            loader, inferer = (
                parser.get_parsed_content("train#dataloader"),
                parser.get_parsed_content("validate#inferer"),
            )
            eval_data = list(parser.get_parsed_content("validate#dataset"))
            losses: list[float] = []
            curve: list[tuple[int, dict[str, float | None]]] = []
            while len(losses) < steps:
                chunk = min(eval_every or steps, steps - len(losses))
                losses += train_steps(network, loss_fn, optimizer, loader, chunk, device, on_batch=count)
                rows = []
                for item in eval_data:
                    pred = predict(network, inferer, item["image"], device)
                    cid = case_id(str(item["label"].meta.get("filename_or_obj", "case")), channel_suffix=False)
                    rows += case_metrics(pred, item["label"], names, spacing_of(item["label"]), case_id=cid)
                summary = summarize(rows)
                curve.append((len(losses), {n: c["metrics"]["dice"]["mean"] for n, c in summary["classes"].items()}))
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "dice": curve[-1][1],
                    "curve": curve,
                    "status": {n: c["status"] for n, c in summary["classes"].items()},
                    "per_case_dice": {f"{r['case']}/{r['class']}": r["dice"] for r in rows},
                    "patch_share": {names[c]: float(seen[c] / len(losses)) for c in names},
                    "final_loss": float(np.mean(losses[-10:])),
                    "seconds": time.perf_counter() - start,
                }
            )
            logger.info(
                "sampling bench: arm %s seed %d: Dice %s (%.0f s)", arm, seed, runs[-1]["dice"], runs[-1]["seconds"]
            )
    out: dict[str, Any] = {
        "arms": {},
        "per_run": runs,
        "steps": steps,
        "seeds": list(seeds),
        "eval_section": eval_section,
    }
    out["n_train"], out["n_eval"] = len(train_items), len(eval_items)
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        classes = list(rs[0]["dice"])
        vals = {c: [r["dice"][c] for r in rs if r["dice"][c] is not None] for c in classes}
        out["arms"][arm] = {
            "dice": {c: float(np.mean(v)) if v else None for c, v in vals.items()},
            "dice_std": {c: float(np.std(v)) if len(v) > 1 else None for c, v in vals.items()},
            "missed": {c: sum(r["status"][c]["missed"] for r in rs) for c in classes},
            "fp_only": {c: sum(r["status"][c]["fp_only"] for r in rs) for c in classes},
            "patch_share": {c: float(np.mean([r["patch_share"][c] for r in rs])) for c in rs[0]["patch_share"]},
            "curve": {
                step: {c: _mean([r["curve"][i][1][c] for r in rs]) for c in classes}
                for i, (step, _) in enumerate(rs[0]["curve"])
            },
            "seconds": float(np.mean([r["seconds"] for r in rs])),
        }
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset_dir", type=Path, help="dataset (default: synthetic site A, 8 train / 10 test, written to OUT/data)"
    )
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: bundles/transfer_3d_segmentation)")
    parser.add_argument(
        "--arms", nargs="+", default=["uniform", "classes"], help="uniform, classes[:r,..], posneg[:p,n]"
    )
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per arm (equal for every arm)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-section", default="test", help="dataset section scored (default: test)")
    parser.add_argument("--eval-every", type=int, default=200, help="also score every N steps (learning curve per arm)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=JSON",
        help="bundle override, repeatable, e.g. --set 'pixdim=[2,2,2.5]' --set lr=0.003",
    )


@register(
    "sampling",
    help="uniform vs class-balanced patch sampling at equal steps: per-class Dice",
    add_arguments=_sampling_args,
)
def bench_sampling(args: argparse.Namespace) -> BenchResult:
    """The ``sampling`` benchmark from CLI arguments (see :func:`sampling_benchmark`)."""
    from pipeline.bundle.config import BUNDLE_3D
    from pipeline.data.synthetic import make_site

    dataset = args.dataset_dir
    if dataset is None:
        dataset = Path(args.out) / "data" / "site_A"
        if not (dataset / "dataset.json").is_file():
            make_site(dataset, site="A", n_train=8, n_val=0, n_test=10, seed=0)
    overrides = {"train#preprocessing#augment": False, **SAMPLING_DEFAULTS, **parse_set_options(args.set)}
    details = sampling_benchmark(
        dataset,
        args.bundle or BUNDLE_3D,
        args.arms,
        args.steps,
        args.seeds,
        overrides,
        args.eval_section,
        args.eval_every,
    )
    details["overrides"], details["dataset_dir"] = overrides, str(dataset)
    rows = []
    for arm, a in details["arms"].items():
        row: dict[str, Any] = {"arm": arm}
        for c, d in a["dice"].items():
            sd = a["dice_std"][c]
            row[f"Dice {c}"] = "–" if d is None else f"{d:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
        lesion = list(a["dice"])[-1]
        row[f"{lesion} missed / fp-only"] = f"{a['missed'][lesion]} / {a['fp_only'][lesion]}"
        row[f"patches with {lesion}"] = f"{100 * a['patch_share'][lesion]:.0f}%"
        if len(a["curve"]) > 1:
            row[f"Dice {lesion} by step"] = ", ".join(
                f"{step}: {'–' if d[lesion] is None else f'{d[lesion]:.2f}'}" for step, d in a["curve"].items()
            )
        row["steps x seeds"] = f"{details['steps']} x {len(details['seeds'])}"
        row["train/eval cases"] = f"{details['n_train']}/{details['n_eval']}"
        rows.append(row)
    return BenchResult("sampling", rows=rows, details=details)


# Defaults sized for a few minutes on 2 shared CPU cores; every one can be changed with --set.
SAMPLING_DEFAULTS: dict[str, Any] = {
    "patch_size": [32, 32, 32],
    "num_samples": 2,
    "batch_size": 2,
    "sw_batch_size": 4,
    "lr": 0.003,
}

"""Speed benchmarks, each against the bare model on the same network and batch (``python -m pipeline bench NAME``).

- ``train_step``: the bundle's ``SupervisedTrainer`` with its handlers and ``CacheDataset``/``ThreadDataLoader``
  (from ``train.json``) vs forward + DiceCE + backward + step on a batch already in memory (target <= 1.10 CPU,
  <= 1.15 GPU); on CUDA also the bare loop with ``loss.item()`` every step (the sync StatsHandler adds).
- ``data``: patches/s out of the bundle's training loader with ``CacheDataset`` vs a plain ``Dataset``.
- ``frozen``: a step with the encoder frozen (:func:`pipeline.networks.stages.freeze`) vs a full step (target <= 0.6).
- ``infer``: the bundle's ``SlidingWindowInferer`` on one volume vs the bare forward over its windows (<= 1.25).
- ``malloc``: ``train_step`` in fresh processes with default glibc malloc, ``MALLOC_*`` variables, or
  :func:`tune_malloc`.
- ``all``: the first four in one process; ``speed.json`` and one ``## speed`` table in ``docs/benchmarks.md``.

Arms are timed in interleaved chunks (ours, reference, ours, ...) after warm-up, and each figure is the median over
``--repeats`` chunks of ``--steps`` iterations, so load changes on a shared machine hit both arms. Peak memory: the
resident set sampled every 10 ms (and ``getrusage``'s process peak) on CPU, ``max_memory_allocated`` on CUDA.
CUDA runs use the bundle's AMP setting (autocast + GradScaler, as ``SupervisedTrainer``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import ctypes.util
import inspect
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness import BenchResult, register
from pipeline.bundle.overrides import parse_set_options

__all__ = [
    "MALLOC_ENV",
    "SPEED_BENCHMARKS",
    "SpeedConfig",
    "config_from_args",
    "data_benchmark",
    "frozen_benchmark",
    "infer_benchmark",
    "malloc_benchmark",
    "malloc_state",
    "speed_rows",
    "train_step_benchmark",
    "tune_malloc",
]

logger = logging.getLogger(__name__)

MALLOC_ENV: dict[str, str] = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc <malloc.h>
_TUNED: list[bool] = []
TARGETS = {"train_step": (1.10, 1.15), "frozen": (0.6, 0.6), "infer": (1.25, 1.25)}


def tune_malloc(trim_threshold: int = 2**31 - 1, mmap_max: int = 0) -> bool:
    """``mallopt`` the glibc allocator like ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`` (see STACK-NOTES).

    Large tensors are then served from the heap and kept instead of being mmap'd and unmapped (page faults) every
    step. Affects allocations made after the call; ``mallopt`` takes an ``int``, so the trim threshold is capped at
    2 GiB. Returns False (and changes nothing) without glibc.
    """
    if platform.system() != "Linux" or not platform.libc_ver()[0].startswith("glibc"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_MAX, int(mmap_max)) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, int(min(trim_threshold, 2**31 - 1))) == 1 and ok
    if ok:
        _TUNED.append(True)
    return ok


def malloc_state() -> dict[str, Any]:
    """How this process's allocator is set up: ``MALLOC_*`` environment variables and :func:`tune_malloc` calls."""
    return {"env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}, "mallopt_called": bool(_TUNED)}


# ------------------------------------------------------------------------------------------------ settings, timing
@dataclass
class SpeedConfig:
    """Settings shared by the benchmarks; ``overrides`` are bundle ids (``{"patch_size": [96, 96, 96]}``)."""

    bundle: Path
    dataset_dir: Path | None = None
    out: Path = Path("bench_out")
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    warmup: int = 2
    steps: int = 3
    repeats: int = 3
    volume: tuple[int, ...] = (160, 160, 80)
    channels_last: bool = False
    cudnn_benchmark: bool = False
    sync_arm: bool | None = None

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"'device' must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("'device' is 'cuda' but torch sees no GPU. Fix: --device auto or cpu.")
        if self.warmup < 1 or self.steps < 1 or self.repeats < 1:
            raise ValueError(f"need warmup, steps, repeats >= 1; got {self.warmup}, {self.steps}, {self.repeats}.")


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _autocast(amp: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cuda") if amp else contextlib.nullcontext()


def _timed(fn: Callable[[int], int], n: int, sync: Callable[[], None]) -> float:
    """Seconds per unit of ``fn(n)`` (which returns the units it processed)."""
    sync()
    start = time.perf_counter()
    units = fn(n)
    sync()
    return (time.perf_counter() - start) / max(1, units)


def _interleave(
    arms: dict[str, Callable[[int], int]], cfg: SpeedConfig, sync: Callable[[], None], steps: int = 0, warmup: int = 0
) -> dict[str, list[float]]:
    """Warm every arm up, then time ``repeats`` chunks of ``steps`` units per arm, the arms alternating."""
    for fn in arms.values():
        fn(warmup or cfg.warmup)
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(cfg.repeats):
        for name, fn in arms.items():
            times[name].append(_timed(fn, steps or cfg.steps, sync))
    return times


class _PeakMemory:
    """Peak resident set (sampled every 10 ms from /proc) and CUDA max allocated inside a ``with`` block."""

    def __init__(self) -> None:
        self.device, self.peak, self._stop = torch.device("cpu"), 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page
        except (OSError, IndexError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    def watch(self, device: torch.device) -> None:
        """Also report CUDA memory of ``device`` from now on."""
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def __enter__(self) -> _PeakMemory:
        self.peak, self._thread = self._rss(), threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        scale = 1024 if platform.system() == "Linux" else 1  # ru_maxrss: KiB on Linux, bytes on macOS
        self.result = {
            "peak_rss_gb": self.peak / 1e9 if self.peak else None,
            "process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9,
            "cuda_max_allocated_gb": torch.cuda.max_memory_allocated(self.device) / 1e9
            if self.device.type == "cuda"
            else None,
        }


# ------------------------------------------------------------------------------------------------ bundle pieces
def _dataset(cfg: SpeedConfig) -> Path:
    if cfg.dataset_dir is not None:
        return cfg.dataset_dir
    from pipeline.data.synthetic import make_site

    path = Path(cfg.out) / "data" / "speed_site_A"
    if not (path / "dataset.json").is_file():
        make_site(path, site="A", n_train=4, n_val=1, n_test=0, seed=0)
    return path


def _bundle(
    cfg: SpeedConfig, work: str, extra: dict[str, Any] | None = None, data: bool = True
) -> tuple[Any, torch.device, bool]:
    """The bundle's ``train.json`` parser (outputs in ``work``, device and overrides applied), its device and AMP."""
    from pipeline.bundle.config import open_bundle

    overrides: dict[str, Any] = {"output_dir": f"{work}/runs", "ckpt_dir": f"{work}/models", "resume": False}
    if cfg.device == "cpu":
        overrides.update({"device": "$torch.device('cpu')", "amp": False})
    parser = open_bundle(
        cfg.bundle, "train.json", {**overrides, **cfg.overrides, **(extra or {})}, _dataset(cfg) if data else None
    )
    if cfg.cudnn_benchmark and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    device = torch.device(parser.get_parsed_content("device"))
    return parser, device, bool(parser.get_parsed_content("amp")) and device.type == "cuda"


def _prepare(network: torch.nn.Module, cfg: SpeedConfig, spatial_dims: int) -> torch.nn.Module:
    if cfg.channels_last:
        fmt = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
        network.to(memory_format=fmt)  # type: ignore[call-overload]
    return network


def _batch_shape(parser: Any) -> tuple[int, ...]:
    n = int(parser.get_parsed_content("batch_size")) * int(parser.get_parsed_content("num_samples"))
    patch = [int(s) for s in parser.get_parsed_content("patch_size")]
    return (n, int(parser.get_parsed_content("in_channels")), *patch)


def _bare_steps(network: torch.nn.Module, loss_fn: Any, optimizer: Any, image: Any, label: Any, amp: bool,
                item: bool = False) -> Callable[[int], int]:  # fmt: skip
    """``fn(n)``: n plain training steps (what SupervisedTrainer does, minus engine, handlers and data)."""
    scaler = torch.amp.GradScaler("cuda") if amp else None

    def run(n: int) -> int:
        for _ in range(n):
            network.train()
            optimizer.zero_grad(set_to_none=True)
            with _autocast(amp):
                loss = loss_fn(network(image), label).mean()
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            if item:
                float(loss.detach())  # what StatsHandler/TensorBoardStatsHandler do every iteration: a host sync on GPU
        return n

    return run


def _same_optimizer(optimizer: torch.optim.Optimizer, network: torch.nn.Module) -> torch.optim.Optimizer:
    """A fresh optimizer of the same class and hyper-parameters over ``network``'s parameters (one group)."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return type(optimizer)(network.parameters(), **{k: v for k, v in optimizer.defaults.items() if k in accepted})


def _summary(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}


# ------------------------------------------------------------------------------------------------ benchmarks
def train_step_benchmark(cfg: SpeedConfig) -> dict[str, Any]:
    """Seconds per iteration: the bundle's trainer (data loading and handlers included) vs a bare loop.

    Returns:
        ``{"s_per_it": {"bundle", "bare"[, "bare_item"]}, "ratio", "chunks", "batch_shape", "memory", ...}``.
    """
    from ignite.engine import Events
    from monai.data import list_data_collate

    total = cfg.warmup + cfg.steps * cfg.repeats
    with tempfile.TemporaryDirectory() as work, _PeakMemory() as mem:
        extra = {"max_epochs": 1, "val_interval": 10**6, "train#trainer#epoch_length": total}
        parser, device, amp = _bundle(cfg, work, extra)
        mem.watch(device)
        trainer = parser.get_parsed_content("train#trainer")
        _prepare(trainer.network, cfg, parser.get_parsed_content("spatial_dims"))
        dataset, size = parser.get_parsed_content("train#dataset"), int(parser.get_parsed_content("batch_size"))
        batch = list_data_collate([dataset[i % len(dataset)] for i in range(size)])
        image, label = torch.as_tensor(batch["image"]).to(device), torch.as_tensor(batch["label"]).to(device)
        net = copy.deepcopy(trainer.network)
        opt = _same_optimizer(trainer.optimizer, net)
        arms = {"bare": _bare_steps(net, trainer.loss_function, opt, image, label, amp)}
        if device.type == "cuda" if cfg.sync_arm is None else cfg.sync_arm:
            net2 = copy.deepcopy(net)
            opt2 = _same_optimizer(opt, net2)
            arms["bare_item"] = _bare_steps(net2, trainer.loss_function, opt2, image, label, amp, item=True)
        sync = _sync(device)
        times: dict[str, list[float]] = {"bundle": [], **{k: [] for k in arms}}
        stamp = [0.0]

        def on_iteration(engine: Any) -> None:
            k = engine.state.iteration - cfg.warmup
            if k < 0 or k % cfg.steps:
                return
            sync()
            if k == 0:
                for fn in arms.values():
                    fn(cfg.warmup)
            else:
                times["bundle"].append((time.perf_counter() - stamp[0]) / cfg.steps)
                for name, fn in arms.items():
                    times[name].append(_timed(fn, cfg.steps, sync))
            if len(times["bundle"]) >= cfg.repeats:
                engine.terminate()
                return
            sync()
            stamp[0] = time.perf_counter()

        trainer.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
        trainer.run()
    med = _summary(times)
    return {
        "s_per_it": med,
        "ratio": med["bundle"] / med["bare"],
        "sync_cost_ratio": med["bare_item"] / med["bare"] if "bare_item" in med else None,
        "chunks": times,
        "batch_shape": list(image.shape),
        "device": str(device),
        "amp": amp,
        "handlers": [type(h).__name__ for h in parser.get_parsed_content("train#handlers").values()],
        "memory": mem.result,
    }


def data_benchmark(cfg: SpeedConfig) -> dict[str, Any]:
    """Patches per second out of the bundle's training loader, with ``CacheDataset`` and with a plain ``Dataset``."""
    arms: dict[str, Callable[[int], int]] = {}
    fill: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work, _PeakMemory() as mem:
        plain = {"_target_": "Dataset", "data": "@train#datalist", "transform": "@train#preprocessing"}
        for name, extra in (("cached", {}), ("plain", {"train#dataset": plain})):
            parser = _bundle(cfg, work, extra)[0]
            start = time.perf_counter()
            parser.get_parsed_content("train#dataset")
            fill[name] = time.perf_counter() - start
            arms[name] = _loader_arm(parser.get_parsed_content("train#dataloader"))
        times = _interleave(arms, cfg, lambda: None, steps=2 * cfg.steps)
    med = _summary(times)
    return {
        "patches_per_s": {k: 1.0 / v for k, v in med.items()},
        "ratio": med["cached"] / med["plain"],
        "dataset_build_s": fill,
        "chunks": times,
        "memory": mem.result,
    }


def _loader_arm(loader: Any) -> Callable[[int], int]:
    def forever() -> Iterator[Any]:
        while True:
            yield from loader

    it = forever()
    return lambda n: sum(int(next(it)["image"].shape[0]) for _ in range(n))


def frozen_benchmark(cfg: SpeedConfig) -> dict[str, Any]:
    """Seconds per step with the encoder frozen (decoder + head train) vs the full network, same batch."""
    from pipeline.networks.stages import freeze, param_groups

    with tempfile.TemporaryDirectory() as work, _PeakMemory() as mem:
        parser, device, amp = _bundle(cfg, work, data=False)
        mem.watch(device)
        full = _prepare(parser.get_parsed_content("network"), cfg, parser.get_parsed_content("spatial_dims"))
        frozen = copy.deepcopy(full)
        freeze(frozen, "encoder")
        lr, wd = float(parser.get_parsed_content("lr")), float(parser.get_parsed_content("weight_decay"))
        shape, classes = _batch_shape(parser), int(parser.get_parsed_content("out_channels"))
        gen = torch.Generator().manual_seed(0)
        image = torch.rand(shape, generator=gen).to(device)
        label = torch.randint(0, classes, (shape[0], 1, *shape[2:]), generator=gen).float().to(device)
        loss = parser.get_parsed_content("loss")
        arms = {
            name: _bare_steps(
                net, loss, torch.optim.AdamW(param_groups(net, lr, weight_decay=wd), lr=lr), image, label, amp
            )  # fmt: skip
            for name, net in (("frozen", frozen), ("full", full))
        }
        times = _interleave(arms, cfg, _sync(device))
    med = _summary(times)
    trainable = sum(p.numel() for p in frozen.parameters() if p.requires_grad)
    return {
        "s_per_it": med,
        "ratio": med["frozen"] / med["full"],
        "trainable_params": {"frozen": trainable, "full": sum(p.numel() for p in full.parameters() if p.requires_grad)},
        "chunks": times,
        "batch_shape": list(shape),
        "memory": mem.result,
    }


def infer_benchmark(cfg: SpeedConfig) -> dict[str, Any]:
    """Seconds per volume: the bundle's ``validate#inferer`` vs the bare forward over the windows it cuts."""
    with tempfile.TemporaryDirectory() as work, _PeakMemory() as mem:
        parser, device, amp = _bundle(cfg, work, data=False)
        mem.watch(device)
        spatial_dims = int(parser.get_parsed_content("spatial_dims"))
        if len(cfg.volume) != spatial_dims:
            raise ValueError(f"'volume' must have {spatial_dims} entries (spatial_dims), got {list(cfg.volume)!r}.")
        net = _prepare(parser.get_parsed_content("network"), cfg, spatial_dims).eval()
        inferer, classes = parser.get_parsed_content("validate#inferer"), int(parser.get_parsed_content("out_channels"))
        gen = torch.Generator().manual_seed(0)
        volume = torch.rand((1, int(parser.get_parsed_content("in_channels")), *cfg.volume), generator=gen).to(device)
        windows: list[torch.Tensor] = []

        def record(x: torch.Tensor) -> torch.Tensor:
            windows.append(x.clone())
            return torch.zeros((x.shape[0], classes, *x.shape[2:]), device=x.device)

        with torch.no_grad():
            inferer(volume, record)

        def ours(n: int) -> int:
            with torch.no_grad(), _autocast(amp):
                for _ in range(n):
                    inferer(volume, net)
            return n

        def bare(n: int) -> int:
            with torch.no_grad(), _autocast(amp):
                for _ in range(n):
                    for w in windows:
                        net(w)
            return n

        times = _interleave({"sliding_window": ours, "bare": bare}, cfg, _sync(device), steps=1, warmup=1)
    med = _summary(times)
    return {
        "s_per_volume": med,
        "ratio": med["sliding_window"] / med["bare"],
        "volume": list(cfg.volume),
        "windows": sum(int(w.shape[0]) for w in windows),
        "forward_calls": len(windows),
        "chunks": times,
        "memory": mem.result,
    }


# ------------------------------------------------------------------------------------------------ malloc (subprocesses)
def _worker(spec_json: str) -> None:
    """Entry point of one ``malloc`` arm in a fresh process: ``train_step`` under the arm's allocator settings."""
    spec = json.loads(spec_json)
    tuned = tune_malloc() if spec["mallopt"] else False
    torch.set_num_threads(int(spec["threads"]))
    cfg = spec["config"]
    cfg = SpeedConfig(**{**cfg, "bundle": Path(cfg["bundle"]), "out": Path(cfg["out"]),
                         "dataset_dir": Path(cfg["dataset_dir"]) if cfg["dataset_dir"] else None})  # fmt: skip
    result = train_step_benchmark(cfg)
    result.update(mallopt=tuned, malloc=malloc_state(), threads=torch.get_num_threads())
    Path(spec["result"]).write_text(json.dumps(result, default=str))


def _parse_arm(spec: str, threads: int) -> tuple[str, int]:
    name, _, t = spec.partition(":t")
    if name not in ("default", "env", "mallopt") or (t and not t.isdigit()):
        raise ValueError(f"Bad malloc arm {spec!r}; expected default, env or mallopt, optionally ':t<threads>'.")
    return name, int(t) if t else threads


def malloc_benchmark(
    cfg: SpeedConfig, arms: tuple[str, ...] = ("default", "env", "mallopt"), rounds: int = 1, timeout_s: int = 900
) -> dict[str, Any]:
    """``train_step`` in a fresh process per arm and round: ``default`` (no ``MALLOC_*`` variables), ``env``
    (:data:`MALLOC_ENV`), ``mallopt`` (:func:`tune_malloc` after the imports); ``:t<N>`` sets torch threads.

    Returns:
        ``{"s_per_it": {arm: {"bundle", "bare"}}, "ratio_to_default": {arm: bundle s/it / default's}, "runs": ...}``.
    """
    _dataset(cfg)  # generate once, outside the timed processes
    config = json.loads(json.dumps(asdict(cfg), default=str))
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for r in range(rounds):
        for arm in arms if r % 2 == 0 else arms[::-1]:  # alternate the order: a load drift hits every arm alike
            name, threads = _parse_arm(arm, torch.get_num_threads())
            env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
            env.update(MALLOC_ENV if name == "env" else {})
            with tempfile.TemporaryDirectory() as tmp:
                spec = {"mallopt": name == "mallopt", "threads": threads, "config": config, "result": f"{tmp}/r.json"}
                code = "import sys; from benchmarks.speed import _worker; _worker(sys.argv[1])"
                cmd = [sys.executable, "-c", code, json.dumps(spec)]
                root = Path(__file__).resolve().parents[1]  # benchmarks/ is importable from the checkout root
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=root)
                if proc.returncode != 0 or not Path(spec["result"]).is_file():
                    raise RuntimeError(f"malloc arm {arm!r} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
                runs[arm].append(json.loads(Path(spec["result"]).read_text()))
            logger.info("malloc arm %s: %s s/it", arm, runs[arm][-1]["s_per_it"])
    med = {
        a: {k: statistics.median(r["s_per_it"][k] for r in rs) for k in ("bundle", "bare")} for a, rs in runs.items()
    }
    base = med.get("default", next(iter(med.values())))
    return {
        "s_per_it": med,
        "ratio_to_default": {a: m["bundle"] / base["bundle"] for a, m in med.items()},
        "peak_rss_gb": {a: max(r["memory"]["peak_rss_gb"] or 0.0 for r in rs) for a, rs in runs.items()},
        "runs": runs,
    }


# ------------------------------------------------------------------------------------------------ CLI
def speed_rows(results: dict[str, dict[str, Any]], cuda: bool = False) -> list[dict[str, Any]]:
    """One docs-table row per benchmark result (same columns in every row)."""
    rows = []
    for name, r in results.items():
        if name == "malloc":
            for arm, m in r["s_per_it"].items():
                ours = f"{m['bundle']:.3f} s/it bundle, {m['bare']:.3f} bare"
                rows.append(_row(f"malloc {arm}", ours, "default malloc", r["ratio_to_default"][arm], None,
                                 {"peak_rss_gb": r["peak_rss_gb"][arm]}))  # fmt: skip
            continue
        target = TARGETS[name][int(cuda)] if name in TARGETS else None
        if name == "train_step":
            s = r["s_per_it"]
            ours, ref = f"{s['bundle']:.3f} s/it bundle trainer", f"{s['bare']:.3f} s/it bare loop {r['batch_shape']}"
        elif name == "data":
            p = r["patches_per_s"]
            ours, ref = f"{p['cached']:.1f} patches/s CacheDataset", f"{p['plain']:.1f} patches/s Dataset"
        elif name == "frozen":
            s = r["s_per_it"]
            ours, ref = f"{s['frozen']:.3f} s/it encoder frozen", f"{s['full']:.3f} s/it full fine-tune"
        else:
            s = r["s_per_volume"]
            ours = f"{s['sliding_window']:.2f} s/volume {r['volume']}"
            ref = f"{s['bare']:.2f} s bare forward, {r['windows']} windows"
        rows.append(_row(name, ours, ref, r["ratio"], target, r["memory"]))
    return rows


def _row(name: str, ours: str, ref: str, ratio: float, target: float | None, memory: dict[str, Any]) -> dict[str, Any]:
    return {
        "benchmark": name,
        "ours": ours,
        "reference": ref,
        "ratio": ratio,
        "target": f"<= {target:g}" if target is not None else None,
        "met": None if target is None else ("yes" if ratio <= target else "no"),
        "peak RSS (GB)": memory.get("peak_rss_gb"),
        "CUDA max (GB)": memory.get("cuda_max_allocated_gb"),
    }


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="bundle folder (default: bundles/transfer_3d_segmentation)")
    parser.add_argument("--dataset_dir", type=Path, help="dataset (default: synthetic site A, 4 train + 1 val)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: CUDA if present")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per arm (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="iterations per timed chunk (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed chunks per arm; figures are medians (default 3)")
    parser.add_argument("--volume", type=int, nargs="+", default=[160, 160, 80], help="infer: volume size in voxels")
    parser.add_argument("--channels-last", action="store_true", help="channels_last(_3d) networks (try on CUDA)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    parser.add_argument(
        "--sync-arm", action=argparse.BooleanOptionalAction, default=None,
        help="train_step: also time the bare loop with loss.item() every step (default: on CUDA only)",
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="ID=JSON", help="bundle override, repeatable")


def _malloc_args(parser: argparse.ArgumentParser) -> None:
    _args(parser)
    parser.add_argument("--arms", nargs="+", default=["default", "env", "mallopt"], help="default|env|mallopt[:tN]")
    parser.add_argument("--rounds", type=int, default=1, help="processes per arm (arms alternate)")


def config_from_args(args: argparse.Namespace) -> SpeedConfig:
    """:class:`SpeedConfig` from the ``bench`` CLI arguments (``--set ID=JSON`` become bundle overrides)."""
    from pipeline.bundle.config import BUNDLE_3D

    overrides = parse_set_options(args.set)
    return SpeedConfig(
        bundle=args.bundle or BUNDLE_3D, dataset_dir=args.dataset_dir, out=Path(args.out), overrides=overrides,
        device=args.device, warmup=args.warmup, steps=args.steps, repeats=args.repeats, volume=tuple(args.volume),
        channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark, sync_arm=args.sync_arm,
    )  # fmt: skip


SPEED_BENCHMARKS: dict[str, Callable[[SpeedConfig], dict[str, Any]]] = {
    "train_step": train_step_benchmark,
    "data": data_benchmark,
    "frozen": frozen_benchmark,
    "infer": infer_benchmark,
}


def _result(name: str, cfg: SpeedConfig, results: dict[str, dict[str, Any]]) -> BenchResult:
    cuda = any(str(r.get("device", "")).startswith("cuda") for r in results.values()) or (
        cfg.device != "cpu" and torch.cuda.is_available()
    )
    details = {
        **results,
        "config": json.loads(json.dumps(asdict(cfg), default=str)),
        "malloc": malloc_state(),
        "threads": {"torch": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
                    "cpu_count": os.cpu_count(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    }  # fmt: skip
    return BenchResult(name, rows=speed_rows(results, cuda), details=details)


def _single(name: str) -> Callable[[argparse.Namespace], BenchResult]:
    def run(args: argparse.Namespace) -> BenchResult:
        cfg = config_from_args(args)
        return _result(name, cfg, {name: SPEED_BENCHMARKS[name](cfg)})

    return run


for _name, _help in (
    ("train_step", "bundle training step (trainer + handlers + cached data) vs a bare loop: s/it ratio"),
    ("data", "training data loading, CacheDataset vs Dataset: patches/s"),
    ("frozen", "frozen-encoder step vs full fine-tune step: s/it ratio"),
    ("infer", "sliding-window inference of one volume vs bare forward over its windows: ratio"),
):
    register(_name, help=_help, add_arguments=_args)(_single(_name))


@register(
    "all",
    help="train_step, data, frozen and infer in one process: speed.json + a '## speed' table",
    add_arguments=_args,
)
def bench_all(args: argparse.Namespace) -> BenchResult:
    """The four speed benchmarks in one process (one JSON, one table)."""
    cfg = config_from_args(args)
    results = {}
    for name, fn in SPEED_BENCHMARKS.items():
        start = time.perf_counter()
        results[name] = fn(cfg)
        logger.info("bench %s: ratio %.3f (%.0f s)", name, results[name]["ratio"], time.perf_counter() - start)
    return _result("speed", cfg, results)


@register(
    "malloc",
    help="glibc malloc tuning (env / mallopt) vs default, training step in fresh processes",
    add_arguments=_malloc_args,
)
def bench_malloc(args: argparse.Namespace) -> BenchResult:
    """The ``malloc`` benchmark from CLI arguments (see :func:`malloc_benchmark`)."""
    cfg = config_from_args(args)
    return _result("malloc", cfg, {"malloc": malloc_benchmark(cfg, tuple(args.arms), args.rounds)})

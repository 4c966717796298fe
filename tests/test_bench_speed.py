"""Speed benchmarks (``benchmarks.speed``): structure of results only, never timings (the machines are shared)."""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys

import pytest

import benchmarks.speed as bs  # registers the benchmarks with benchmarks.harness
from benchmarks.__main__ import main
from benchmarks.harness import BENCHMARKS
from tests.conftest import BUNDLE_3D

TINY_SET = ["patch_size=[32,32,32]", "pixdim=[3.0,3.0,4.0]", "num_samples=2", "batch_size=1", "sw_batch_size=2"]
TINY_ARGS = ["--device", "cpu", "--warmup", "1", "--steps", "1", "--repeats", "1", "--volume", "48", "48", "40"]
COLUMNS = ["benchmark", "ours", "reference", "ratio", "target", "met", "peak RSS (GB)", "CUDA max (GB)"]


def _tiny_args(dataset, out, *extra: str) -> list[str]:
    sets = [a for s in TINY_SET for a in ("--set", s)]
    return [*TINY_ARGS, *sets, "--dataset_dir", str(dataset), "--out", str(out), "--doc", str(out / "b.md"), *extra]


def test_benchmarks_are_registered():
    assert {"train_step", "data", "frozen", "infer", "all", "malloc"} <= set(BENCHMARKS)


def test_cli_lists_every_benchmark_in_a_fresh_interpreter():
    # this module imports benchmarks.speed itself, which hides a missing BENCHMARK_MODULES entry in-process
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ("sampling", "train_step", "data", "frozen", "infer", "all", "malloc", "infer_path"):
        assert f"    {name}" in out, f"{name} missing from `python -m benchmarks --help`:\n{out}"


def test_config_and_arguments_are_validated(tmp_path):
    with pytest.raises(ValueError, match=r"'device' must be 'auto', 'cpu' or 'cuda', got 'tpu'"):
        bs.SpeedConfig(bundle=BUNDLE_3D, device="tpu")
    with pytest.raises(ValueError, match=r"need warmup, steps, repeats >= 1; got 0, 3, 3"):
        bs.SpeedConfig(bundle=BUNDLE_3D, warmup=0)
    parser = argparse.ArgumentParser()
    bs._args(parser)
    args = parser.parse_args(["--set", "lr=0.01", "--set", "backbone=resnet18", "--volume", "64", "64", "32"])
    args.out = tmp_path
    cfg = bs.config_from_args(args)
    assert cfg.overrides == {"lr": 0.01, "backbone": "resnet18"} and cfg.volume == (64, 64, 32)
    args.set = ["patch_size"]
    with pytest.raises(ValueError, match=r"--set expects ID=JSON, got 'patch_size'"):
        bs.config_from_args(args)
    assert bs._parse_arm("env:t1", 2) == ("env", 1) and bs._parse_arm("default", 2) == ("default", 2)
    with pytest.raises(ValueError, match=r"Bad malloc arm 'jemalloc'"):
        bs._parse_arm("jemalloc", 2)


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_malloc_state_lists_allocator_settings(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    state = bs.malloc_state()  # tune_malloc itself runs in a fresh process below (it changes the whole process)
    assert state["env"]["MALLOC_ARENA_MAX"] == "2" and isinstance(state["mallopt_called"], bool)


def test_speed_rows_share_columns_and_targets():
    mem = {"peak_rss_gb": 1.5, "cuda_max_allocated_gb": None}
    results = {
        "train_step": {"s_per_it": {"bundle": 1.1, "bare": 1.0}, "ratio": 1.1, "batch_shape": [4, 1, 8, 8, 8],
                       "memory": mem},
        "data": {"patches_per_s": {"cached": 100.0, "plain": 25.0}, "ratio": 0.25, "memory": mem},
        "frozen": {"s_per_it": {"frozen": 0.7, "full": 1.0}, "ratio": 0.7, "memory": mem},
        "infer": {"s_per_volume": {"sliding_window": 2.4, "bare": 2.0}, "ratio": 1.2, "volume": [8, 8, 8],
                  "windows": 3, "memory": mem},
    }  # fmt: skip
    rows = {r["benchmark"]: r for r in bs.speed_rows(results)}
    assert all(list(r) == COLUMNS for r in rows.values())
    assert rows["train_step"]["target"] == "<= 1.1" and rows["train_step"]["met"] == "yes"
    assert rows["frozen"]["met"] == "no" and rows["data"]["target"] is None and rows["data"]["met"] is None
    cuda = {r["benchmark"]: r for r in bs.speed_rows(results, cuda=True)}
    assert cuda["train_step"]["target"] == "<= 1.15"
    malloc = {
        "s_per_it": {"default": {"bundle": 2.0, "bare": 1.9}, "env": {"bundle": 1.0, "bare": 0.9}},
        "ratio_to_default": {"default": 1.0, "env": 0.5},
        "peak_rss_gb": {"default": 1.0, "env": 1.2},
    }
    m = bs.speed_rows({"malloc": malloc})
    assert [r["benchmark"] for r in m] == ["malloc default", "malloc env"] and m[1]["ratio"] == 0.5
    assert list(m[0]) == COLUMNS


@pytest.mark.slow
def test_bench_all_writes_json_and_doc_rows(tiny_dataset_3d, tmp_path, capsys):
    assert main(["all", *_tiny_args(tiny_dataset_3d, tmp_path, "--sync-arm")]) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert result["name"] == "speed" and result["command"].startswith("python -m benchmarks all")
    assert [r["benchmark"] for r in result["rows"]] == ["train_step", "data", "frozen", "infer"]
    for row in result["rows"]:
        assert list(row) == COLUMNS and row["ratio"] > 0 and math.isfinite(row["ratio"])
        assert row["peak RSS (GB)"] > 0 and row["CUDA max (GB)"] is None
    d = result["details"]
    assert set(d["train_step"]["s_per_it"]) == {"bundle", "bare", "bare_item"}  # --sync-arm
    assert all(len(v) == 1 for v in d["train_step"]["chunks"].values())  # --repeats 1
    assert d["train_step"]["batch_shape"] == [2, 1, 32, 32, 32] and d["train_step"]["device"] == "cpu"
    assert "StatsHandler" in d["train_step"]["handlers"]
    assert set(d["data"]["patches_per_s"]) == {"cached", "plain"}
    assert d["frozen"]["trainable_params"]["frozen"] < d["frozen"]["trainable_params"]["full"]
    assert d["infer"]["windows"] >= d["infer"]["forward_calls"] >= 1
    assert {"config", "malloc", "threads"} <= set(d) and d["config"]["overrides"]["patch_size"] == [32, 32, 32]
    doc = (tmp_path / "b.md").read_text()
    assert "## speed" in doc and doc.count("`python -m benchmarks all") == 4
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_malloc_arm_runs_in_a_fresh_process(tiny_dataset_3d, tmp_path):
    tiny = {"patch_size": [32, 32, 32], "pixdim": [3.0, 3.0, 4.0], "batch_size": 1}
    cfg = bs.SpeedConfig(BUNDLE_3D, tiny_dataset_3d, tmp_path, tiny, device="cpu", warmup=1, steps=1, repeats=1)
    out = bs.malloc_benchmark(cfg, arms=("mallopt:t1",))
    run = out["runs"]["mallopt:t1"][0]
    assert run["mallopt"] is GLIBC and run["threads"] == 1 and run["malloc"]["env"] == {}
    assert out["ratio_to_default"] == {"mallopt:t1": 1.0}  # no default arm: relative to itself
    assert set(out["s_per_it"]["mallopt:t1"]) == {"bundle", "bare"} and out["peak_rss_gb"]["mallopt:t1"] > 0

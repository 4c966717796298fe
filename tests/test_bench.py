from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import harness as bench
from benchmarks.__main__ import main
from benchmarks.harness import BenchResult, append_to_doc, parse_arm, register, run_benchmark, write_result


@pytest.fixture
def toy_benchmark():
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=2)

    @register("toy", help="a toy", add_arguments=add)
    def toy(args: argparse.Namespace) -> BenchResult:
        return BenchResult("toy", rows=[{"n": args.n, "score": 0.5}], details={"n": args.n})

    yield toy
    bench.BENCHMARKS.pop("toy")


def test_register_run_and_write(toy_benchmark, tmp_path):
    result = run_benchmark("toy", argparse.Namespace(n=3), command="python -m benchmarks toy --n 3")
    assert result.rows == [{"n": 3, "score": 0.5}] and result.command.endswith("--n 3")
    assert "cores" in result.machine and result.date and result.wall_s >= 0
    data = json.loads(write_result(result, tmp_path).read_text())
    assert data["details"] == {"n": 3} and data["machine"] == result.machine
    with pytest.raises(ValueError, match="Unknown benchmark 'nope'; available: .*'sampling'"):
        run_benchmark("nope", argparse.Namespace())
    with pytest.raises(ValueError, match="'toy' is registered twice"):
        register("toy", help="again")(lambda args: result)


def test_append_to_doc_keeps_one_table_per_benchmark(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nIntro.\n\n## other\n\n| a |\n|---|\n| 1 |\n")
    r = BenchResult("toy", rows=[{"arm": "x", "dice": 0.12345}], command="cmd a", machine="m", date="d", wall_s=2)
    append_to_doc(r, doc)
    append_to_doc(BenchResult("toy", rows=[{"arm": "y", "dice": None}], command="cmd b", machine="m", date="e"), doc)
    append_to_doc(BenchResult("toy", rows=[{"new": 1}], command="cmd c", machine="m", date="f"), doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nIntro.\n\n## other\n\n| a |\n|---|\n| 1 |\n\n## toy\n")
    toy = text.split("## toy\n")[1]
    assert toy.count("| date | arm | dice | wall (s) | machine | command |") == 1
    assert "| d | x | 0.123 | 2 | m | `cmd a` |\n| e | y | – | 0 | m | `cmd b` |" in toy
    assert "| date | new | wall (s) | machine | command |\n|---|---|---|---|---|\n| f | 1 | 0 | m | `cmd c` |" in toy


@pytest.mark.parametrize(
    ("spec", "overrides"),
    [
        ("uniform", {"sampling": "uniform"}),
        ("classes", {"sampling": "classes"}),
        ("classes:1,1,2,4", {"sampling": "classes", "ratios": [1.0, 1.0, 2.0, 4.0]}),
        ("posneg:3,1", {"sampling": "posneg", "pos": 3.0, "neg": 1.0}),
    ],
)
def test_parse_arm(spec, overrides):
    assert parse_arm(spec) == overrides


@pytest.mark.parametrize("spec", ["random", "posneg:1", "classes:a,b", "uniform:1"])
def test_parse_arm_rejects_bad_specs(spec):
    with pytest.raises(ValueError, match=f"Bad arm '{spec}'"):
        parse_arm(spec)


@pytest.mark.slow
def test_sampling_benchmark_cli_smoke(tiny_dataset_3d, tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    args = ["sampling", "--dataset_dir", str(tiny_dataset_3d), "--steps", "2", "--eval-every", "1"]
    args += ["--out", str(tmp_path / "out"), "--doc", str(doc), "--arms", "uniform", "classes:0,1,1,1"]
    args += ["--set", "pixdim=[3,3,4]", "--set", "batch_size=1"]
    assert main(args) == 0
    data = json.loads((tmp_path / "out" / "sampling.json").read_text())
    arms = data["details"]["arms"]
    assert set(arms) == {"uniform", "classes:0,1,1,1"} and data["details"]["steps"] == 2
    assert set(arms["uniform"]["dice"]) == {"organ", "vessel", "lesion"}
    assert all(0.0 <= v <= 1.0 for a in arms.values() for v in a["patch_share"].values())
    assert list(arms["uniform"]["curve"]) == ["1", "2"]  # evaluated after 1 and 2 steps (JSON keys)
    text = doc.read_text()
    assert "| 1: " in text and text.count("| uniform |") == 1 and text.count("| classes:0,1,1,1 |") == 1
    assert data["details"]["arguments"]["steps"] == "2"
    assert data["command"].startswith("python -m benchmarks sampling --dataset_dir")
    assert "Dice lesion" in capsys.readouterr().out

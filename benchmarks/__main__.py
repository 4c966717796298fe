"""``python -m benchmarks NAME ...`` (from a source checkout): run a registered benchmark, write its JSON and a row in
the docs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

__all__ = ["HELP", "add_arguments", "main", "run"]

HELP = "run a named benchmark (e.g. `sampling`), write <out>/<name>.json and append rows to docs/benchmarks.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from benchmarks.harness import DOC, load_benchmarks

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("bench_out"), help="output folder (default: bench_out)")
    common.add_argument("--doc", type=Path, default=DOC, help="markdown file the rows are appended to")
    common.add_argument("--no-doc", action="store_true", help="do not append to the markdown file")
    common.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy 2-core machine)")
    sub = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, bench in sorted(load_benchmarks().items()):
        p = sub.add_parser(name, help=bench.help, description=bench.help, parents=[common])
        bench.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from benchmarks.harness import append_to_doc, run_benchmark, write_result

    if args.threads:
        torch.set_num_threads(args.threads)
    argv = list(getattr(args, "_argv", None) or [])
    if argv:
        command = shlex.join(["python", "-m", "benchmarks", *argv])
    else:  # called in-process without a command line: the arguments are in the JSON
        command = f"python -m benchmarks {args.benchmark} (in-process call; arguments in {args.benchmark}.json)"
    try:
        result = run_benchmark(args.benchmark, args, command)
    except (OSError, ValueError) as e:
        print(f"bench {args.benchmark}: {e}")
        return 1
    result.details["arguments"] = {k: str(v) for k, v in vars(args).items() if not k.startswith("_")}
    path = write_result(result, args.out)
    for row in result.rows:
        print("  ".join(f"{k}: {v}" for k, v in row.items()))
    print(f"{result.name}: {result.wall_s:.0f} s on {result.machine}")
    print(f"wrote {path}")
    if not args.no_doc:
        print(f"appended {len(result.rows)} row(s) to {append_to_doc(result, args.doc)}")
    print(json.dumps({"command": command}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the benchmark; returns the exit code."""
    import logging

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args._argv = argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""Command-line tools of the pipeline toolkit (``python -m pipeline <verb>``), one verb per user task.

Each verb lives in ``pipeline/commands/<verb>.py`` and defines ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code). Commands are thin: they parse, call the library modules, and print
for people. Library code logs, it never prints.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["ALIASES", "VERBS", "build_parser", "main"]

# verb -> module under pipeline.commands (dashes become underscores); order is the order in --help.
VERBS: tuple[str, ...] = (
    "synth",
    "check-data",
    "audit",
    "plan",
    "overfit",
    "demo",
    "demo-2d",
    "evaluate",
    "report",
    "infer",
    "drift",
    "pack",
    "verify",
    "import",
    "keygen",
)


# verbs that are another verb with other defaults: verb -> (verb, defaults)
ALIASES: dict[str, tuple[str, dict[str, object]]] = {"demo-2d": ("demo", {"dims": 2})}


def _module_for(verb: str):
    verb = ALIASES.get(verb, (verb, {}))[0]
    name = "import_bundle" if verb == "import" else verb.replace("-", "_")
    try:
        return importlib.import_module(f"pipeline.commands.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"pipeline.commands.{name}":
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        mod = _module_for(verb)
        if mod is None:
            continue
        target, defaults = ALIASES.get(verb, (verb, {}))
        text = (
            mod.HELP if target == verb else f"`{target}` with " + ", ".join(f"--{k} {v}" for k, v in defaults.items())
        )
        p = sub.add_parser(verb, help=text, description=text)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, **defaults)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "verb", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

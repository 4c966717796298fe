"""Command-line overrides of ``python -m monai.bundle run``: fail on ids that no config file defines.

The one place outside the CLI that reads ``sys.argv``: MONAI gives a config no access to its command line, so the
bundles' ``initialize`` calls :func:`check_overrides`, which parses it, refuses misspelt override ids and installs
:func:`bundle_error_hook` so that a pipeline error (bad data, existing checkpoints, a typo) ends the run with its own
one-line message instead of MONAI's ``Failed to evaluate`` wrapper traceback. Library code raises plain exceptions.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "UnknownOverrideError",
    "bundle_error_hook",
    "bundle_overrides",
    "check_overrides",
    "command_line",
    "parse_set_options",
]

logger = logging.getLogger(__name__)


class UnknownOverrideError(ValueError):
    """A command-line override names an id that no config file defines (a typo MONAI would silently accept)."""


def parse_set_options(items: Sequence[str], option: str = "--set") -> dict[str, Any]:
    """``["patch_size=[32,32,32]", "lr=0.01", "name=x"]`` -> bundle overrides; values are JSON, else plain strings.

    Raises:
        ValueError: an item has no ``=``; the message names ``option`` and shows the expected form.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects ID=JSON, got {item!r}; e.g. {option} 'patch_size=[32,32,32]'.")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def command_line() -> list[str]:
    """The process's command line (``sys.argv``), e.g. for ``run_info.json``."""
    return list(sys.argv)


def _pipeline_error(exc: BaseException | None) -> BaseException | None:
    """The innermost exception raised by pipeline code in ``exc``'s chain (``__cause__``/``__context__``), if any."""
    found, seen = None, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.startswith("pipeline."):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def bundle_error_hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
    """``sys.excepthook`` for ``python -m monai.bundle run``: a pipeline error is logged as one line (exit code 1);
    anything else gets Python's usual traceback."""
    root = _pipeline_error(exc)
    if root is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    logger.error("%s: %s", type(root).__name__, root)


def _run_params() -> set[str]:
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import run

    names = set(inspect.signature(run).parameters) | set(inspect.signature(ConfigWorkflow.__init__).parameters)
    return (names | {"workflow_name", "workflow_type"}) - {"self", "override", "kwargs"}


def bundle_overrides(argv: Sequence[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(run arguments, config overrides)`` of a ``python -m monai.bundle run ...`` command line.

    Args:
        argv: defaults to ``sys.argv``. Returns None unless it is ``<.../monai/bundle/__main__.py> run ...``
            (e.g. inside pytest or a ``ConfigParser`` script), where overrides cannot be seen.
    """
    argv = list(sys.argv if argv is None else argv)
    main = Path(argv[0]) if argv else Path()
    if len(argv) < 2 or main.parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return None
    reserved = _run_params()
    run_args: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    tokens, i = argv[2:], 0
    if tokens and not tokens[0].startswith("-"):
        run_args["run_id"], i = tokens[0], 1
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok.startswith("--"):
            continue
        key, sep, value = tok[2:].partition("=")
        key = key.replace("-", "_")  # as Python Fire does
        if not sep and i < len(tokens) and not tokens[i].startswith("--"):
            value, i = tokens[i], i + 1
        (run_args if key in reserved else overrides)[key] = value
    if run_args.get("args_file"):
        from monai.bundle import ConfigParser

        for key, value in ConfigParser.load_config_file(run_args["args_file"]).items():
            target = run_args if key in reserved else overrides
            target.setdefault(key, value)
    return run_args, overrides


def _as_files(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("["):
        try:
            return [str(v) for v in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            return [str(v) for v in json.loads(text)]
    return [text] if Path(text).is_file() or "," not in text else text.split(",")


def _nearest(config: Any, key: str) -> str | None:
    parts, node = key.split("#"), config
    prefix: list[str] = []
    for part in parts[:-1]:  # walk down as far as the id exists
        nxt = node.get(part) if isinstance(node, dict) else None
        if nxt is None:
            break
        node, prefix = nxt, prefix + [part]
    if not isinstance(node, dict):
        return None
    wanted = parts[len(prefix)]
    names = [str(k).lstrip("+") for k in node]
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    return "#".join(prefix + [close[0]]) if close else None


def check_overrides(argv: Sequence[str] | None = None, config_files: Sequence[str] | None = None) -> list[str]:
    """Fail on command-line overrides of ids that no config file defines.

    ``python -m monai.bundle run training --max_epoch 3`` would add a new, unused id ``max_epoch`` and train for the
    configured ``max_epochs``. The bundle's ``initialize`` calls this first: it parses ``sys.argv`` (MONAI gives a
    config no access to its overrides) and re-reads the ``--config_file`` list without overrides. On a bundle run's
    own command line it also installs :func:`bundle_error_hook`.

    Args:
        argv: command line, default ``sys.argv``; anything but a ``monai.bundle run`` command is not checked.
        config_files: default: the command's ``--config_file``.

    Returns:
        the override ids checked (empty when not run from ``monai.bundle run``).

    Raises:
        UnknownOverrideError: naming each unknown id and the nearest valid one.
    """
    parsed = bundle_overrides(argv)
    if parsed is None:
        logger.debug("check_overrides: not a 'python -m monai.bundle run' command line; nothing to check")
        return []
    if argv is None:  # this process is the bundle run: its pipeline errors end it with their own message
        sys.excepthook = bundle_error_hook
    run_args, overrides = parsed
    files = list(config_files) if config_files is not None else _as_files(run_args.get("config_file", ""))
    files = [f for f in files if f]
    if not files:
        return []
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(files)
    config: Any = parser.get("", {})
    if run_args.get("tracking"):  # experiment tracking adds its own ids (tracking_uri, run_name, ...)
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        settings: Any = DEFAULT_EXP_MGMT_SETTINGS.get(str(run_args["tracking"]), {})
        parser.update({k: v for k, v in dict(settings.get("configs", {})).items() if k not in parser})
    unknown = [k for k in overrides if not k.startswith("_meta_") and k not in parser]
    if unknown:
        lines = []
        for key in unknown:
            near = _nearest(config, key)
            lines.append(f"--{key}" + (f" (did you mean --{near}?)" if near else ""))
        top = sorted(str(k).lstrip("+") for k in config if k != "_meta_")
        raise UnknownOverrideError(
            f"Unknown config override(s) {', '.join(lines)}: no such id in {[Path(f).name for f in files]}. MONAI "
            f"would add it as a new id and silently ignore it. Fix: spell the id as in the config (top-level ids: "
            f"{top}); to add a new id on purpose, put it in an extra --config_file."
        )
    return list(overrides)

"""Run bundle steps as a user types them: the ``python -m monai.bundle run`` command line, running it with its log, and
staging/configuring a bundle copy for a site."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.utils.atomic import write_text

__all__ = [
    "BundleRunError",
    "bundle_command",
    "cli_value",
    "configure_bundle",
    "run_bundle",
    "shared_values",
    "stage_bundle",
]

logger = logging.getLogger(__name__)


class BundleRunError(RuntimeError):
    """A bundle step (a `python -m monai.bundle run` subprocess) failed; the message names its log file."""


def bundle_command(
    bundle_root: str | Path,
    run_id: str | None,
    config_files: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    configs_dir: str | Path | None = None,
) -> list[str]:
    """The ``python -m monai.bundle run`` command line for a bundle step.

    Args:
        bundle_root: the bundle folder (``models/`` is read and written there).
        run_id: ``training``, ``evaluating``, ``inferring``; None for MONAI's default ``run`` (with
            ``["train.json", "evaluate.json"]`` it evaluates, as in the model zoo).
        config_files: config file names inside ``configs_dir`` (later files override earlier ones).
        overrides: ``--key value`` pairs; lists/dicts are passed as JSON.
        configs_dir: where the configs are read from; default ``<bundle_root>/configs``.
    """
    configs = Path(configs_dir) if configs_dir is not None else Path(bundle_root) / "configs"
    files = [str(configs / f) for f in config_files]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", *([run_id] if run_id else []),
        "--config_file", files[0] if len(files) == 1 else json.dumps(files),
        "--meta_file", str(configs / "metadata.json"),
        "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(bundle_root),
    ]  # fmt: skip
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd


def cli_value(value: Any) -> str:
    """A command-line value that ``python -m monai.bundle run`` (python-fire) parses back to ``value``.

    Fire reads Python literals, not JSON: ``null``/``true`` (also inside a JSON list or dict) would arrive as the
    strings ``"null"``/``"true"``, so non-strings are written with ``repr``. A string is passed as it is unless fire
    would read it as something else (``"1"``, ``"None"``, ``"[a]"``): then it is quoted.
    """
    from fire.parser import DefaultParseValue

    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str) and DefaultParseValue(value) == value:
        return value
    return repr(value)


def run_bundle(cmd: Sequence[str], log_file: str | Path) -> float:
    """Run one bundle step, teeing nothing to the console; returns its wall time in seconds."""
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("running: %s", shlex.join(cmd))
    start = time.perf_counter()
    with open(log_file, "w") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_file.read_text()[-2000:]
        raise BundleRunError(f"step failed (exit {proc.returncode}); see {log_file}. Last output:\n{tail}")
    return elapsed


def stage_bundle(src: str | Path, dst: str | Path) -> Path:
    """Copy a bundle's configs/docs (not its weights) to ``dst``, the folder a site trains in."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", "runs", "eval", "__pycache__"))
    (dst / "models").mkdir()
    return dst


def configure_bundle(bundle_dir: str | Path, values: Mapping[str, Any]) -> None:
    """Set top-level config values in a bundle copy's ``train.json`` and ``inference.json`` (what a site edits:
    e.g. its intensity normalisation), so every later run of that bundle — training, evaluation, inference —
    uses them without command-line overrides. ``class_names``/``in_channels`` also set ``metadata.json``'s
    ``channel_def`` and input channels, which loading, packing and the receiver's verify read."""
    configs = Path(bundle_dir) / "configs"
    updated = {}
    for name in ("train.json", "inference.json"):
        path = configs / name
        config = json.loads(path.read_text())
        unknown = sorted(set(values) - set(config))
        if unknown:
            raise KeyError(f"{path}: no top-level ids {unknown}; cannot configure them.")
        updated[path] = {**config, **values}
    if "class_names" in values or "in_channels" in values:
        path = configs / "metadata.json"
        meta = json.loads(path.read_text())
        fmt = meta["network_data_format"]
        if "class_names" in values:
            names = list(values["class_names"])
            fmt["outputs"]["pred"]["channel_def"] = {str(i): str(n) for i, n in enumerate(names)}
            fmt["outputs"]["pred"]["num_channels"] = len(names)
        if "in_channels" in values:
            fmt["inputs"]["image"]["num_channels"] = values["in_channels"]
        updated[path] = meta
    for path, content in updated.items():  # written only once every file was read and checked
        write_text(path, json.dumps(content, indent=4) + "\n")


def shared_values(bundle_dir: str | Path, plan: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``plan`` that every run of a bundle copy shares: ids holding a plain value in both its
    ``train.json`` and ``inference.json`` (``class_names``, ``in_channels``, ``intensity``, ``pixdim``, ``backbone``,
    ...), for :func:`configure_bundle`. An expression (``out_channels: "$len(@class_names)"``) stays: it follows the
    planned values by itself, and a packed bundle whose configs replace code with a literal is refused by the
    receiver's verify. Training-only values (patch, sampling, schedule) stay in the plan's ``--args_file``."""

    def literal(config: Mapping[str, Any], key: str) -> bool:
        value = config.get(key, "$")
        return not (isinstance(value, str) and value.startswith(("$", "@", "%")))

    configs = [json.loads((Path(bundle_dir) / "configs" / f).read_text()) for f in ("train.json", "inference.json")]
    return {k: v for k, v in plan.items() if all(literal(c, k) for c in configs)}

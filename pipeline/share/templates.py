"""A received config is data: it may hold only the receiver's own template code plus the sender's literal values.

Every received config file is compared, id by id, with the same file of the receiver's installed bundle templates
(``bundles/*/configs`` of this toolkit; :data:`TEMPLATE_ENV` names other folders). Ids are normalised and merged the
way MONAI reads them (``#`` and ``::`` are one separator; a top-level key ``"a#b"`` is the value at ``a::b``; ``+``
merge keys keep their ``+``), so ``"pwn#_target_"`` is compared at ``pwn::_target_``. A value passes when:

- it is identical to the template's value at the same id (this is how every ``$`` expression, ``@`` reference,
  ``%`` macro, ``_target_`` and other ``_special_`` key gets in: only the receiver's own, at their own place; a
  ``_special_`` key's value is never a parameter, even when it looks like a plain string); or
- it is a plain JSON literal (numbers, booleans, null, strings not starting with ``$``/``@``/``%``, and lists/dicts
  of those with plain keys) where the template also holds a literal of the same kind: a *parameter*.

Nothing received is parsed as code, imported or evaluated here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.share.files import load_config
from pipeline.share.params import has_rule, merged_problems, param_problem

__all__ = [
    "TEMPLATE_ENV",
    "MAX_DEPTH",
    "ConfigCheck",
    "TemplateMatch",
    "packaged_template_dirs",
    "template_dirs",
    "flatten",
    "is_literal",
    "literal_problems",
    "check_against_template",
    "match_templates",
    "safe_text",
    "data_only_problems",
]

TEMPLATE_ENV = "PIPELINE_BUNDLE_TEMPLATES"
MAX_DEPTH = 32
_SEP = "::"
_SPECIAL_KEY = re.compile(r"^_\w*_$")
_ABS = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")
_MISSING = object()


def safe_text(value: Any, limit: int = 120) -> str:
    """``repr``-like text of a received value for printing: escapes control characters, cut to ``limit``."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def packaged_template_dirs() -> list[Path]:
    """The templates an installed wheel carries (``pipeline/_templates/<name>``, copied from ``bundles/<name>/configs``
    at build time by :mod:`pipeline.share.packaging`); the 3D and 2D bundles first."""
    from importlib import resources

    try:
        base = Path(str(resources.files("pipeline") / "_templates"))
    except (ModuleNotFoundError, TypeError):
        return []
    if not base.is_dir():
        return []
    order = {"transfer_3d_segmentation": 0, "transfer_2d_segmentation": 1}
    return sorted((d for d in base.iterdir() if (d / "configs").is_dir()), key=lambda d: (order.get(d.name, 2), d.name))


def template_dirs() -> list[Path]:
    """The receiver's template bundles: ``$PIPELINE_BUNDLE_TEMPLATES`` (``os.pathsep``-separated bundle folders),
    else the toolkit's own ``bundles/transfer_3d_segmentation`` and ``bundles/transfer_2d_segmentation`` of a source
    checkout, else the copies an installed wheel carries (:func:`packaged_template_dirs`)."""
    env = os.environ.get(TEMPLATE_ENV, "")
    if env:
        dirs = [Path(p) for p in env.split(os.pathsep) if p]
    else:
        from pipeline.bundle.config import BUNDLE_2D, BUNDLE_3D

        dirs = [d for d in (BUNDLE_3D, BUNDLE_2D) if (d / "configs").is_dir()] or packaged_template_dirs()
    return [d for d in dirs if (d / "configs").is_dir()]


def _norm(key: Any) -> str:
    return str(key).replace("#", _SEP)


def _display(cid: str) -> str:
    return cid.replace(_SEP, "#")


def flatten(data: Any) -> dict[str, Any]:
    """``{id: value}`` for every node of a config, ids with ``::``; top-level keys split like MONAI merges them."""
    out: dict[str, Any] = {}

    def walk(cid: str, value: Any, depth: int) -> None:
        out[cid] = value
        if depth > MAX_DEPTH:
            return
        for k, v in _children(value):
            walk(f"{cid}{_SEP}{_norm(k)}", v, depth + 1)

    if isinstance(data, dict):
        for k, v in data.items():
            walk(_norm(k), v, 1)
    return out


def _children(value: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list):
        yield from enumerate(value)


def _plain_key(key: Any) -> bool:
    k = str(key)
    return not (_SPECIAL_KEY.match(k) or "#" in k or _SEP in k or k.startswith("+"))


def is_literal(value: Any, depth: int = 0) -> bool:
    """A plain JSON literal MONAI never evaluates: no ``$``/``@``/``%`` strings, no ``_special_``/id-path keys."""
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(is_literal(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_plain_key(k) and is_literal(v, depth + 1) for k, v in value.items())
    return False


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object" if isinstance(value, dict) else "null"


def literal_problems(value: Any, depth: int = 0) -> list[str]:
    """Why a literal may not ship: absolute/home paths or ``..`` components, non-finite numbers, control codes."""
    if depth > MAX_DEPTH:
        return [f"nested deeper than {MAX_DEPTH} levels"]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"non-finite number {value!r}"]
    if isinstance(value, str):
        if _ABS.match(value) and value != "/":
            return [f"absolute or home path {safe_text(value)!r}"]
        if ".." in re.split(r"[\\/]", value):
            return [f"'..' path component in {safe_text(value)!r}"]
        return []
    return [p for _, v in _children(value) for p in literal_problems(v, depth + 1)]


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@dataclass
class ConfigCheck:
    """One received config compared with its template: ``failures`` ``{id: reason}`` and ``params`` ``{id: value}``
    (the sender's literals that differ from the template), ids with MONAI's ``::``."""

    rel: str
    template: Path | None
    failures: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # the refused values, by the ids of ``failures``


def check_against_template(data: Any, template: Any, rel: str, template_path: Path | None = None) -> ConfigCheck:
    """Compare a received config (parsed JSON) with the template's same file (see the module doc)."""
    check = ConfigCheck(rel, template_path)
    tmap = flatten(template)
    if not isinstance(data, dict):
        check.failures[""] = f"top level is {_kind(data)}, expected an object"
        return check

    def visit(cid: str, value: Any, depth: int) -> None:
        t = tmap.get(cid, _MISSING)
        if depth > MAX_DEPTH:
            check.failures[cid] = f"nested deeper than {MAX_DEPTH} levels"
        elif t is not _MISSING and _same(value, t):
            return
        elif _SPECIAL_KEY.match(cid.rsplit(_SEP, 1)[-1]):  # _target_, _mode_, _requires_, ...: MONAI acts on them
            check.failures[cid] = (
                f"{safe_text(value, 80)!r}: {cid.rsplit(_SEP, 1)[-1]} must be the receiver's template's own "
                f"({safe_text(t, 80)!r})"
                if t is not _MISSING
                else f"{safe_text(value, 80)!r}: not in the template"
            )
        elif t is not _MISSING and is_literal(t) and is_literal(value):
            if t is not None and value is not None and _kind(value) != _kind(t) and not has_rule(cid):
                check.failures[cid] = f"a parameter of the template: expected a {_kind(t)}, got a {_kind(value)}"
            elif problems := literal_problems(value):
                check.failures[cid] = problems[0]
            elif why := param_problem(cid, value):
                check.failures[cid] = why
            else:
                check.params[cid] = value
        elif t is not _MISSING and _kind(value) == _kind(t) in ("object", "list"):
            for k, v in _children(value):
                visit(f"{cid}{_SEP}{_norm(k)}", v, depth + 1)
        elif t is _MISSING:
            check.failures[cid] = f"{safe_text(value, 80)!r}: id not in the receiver's template (not allowed)"
        else:
            check.failures[cid] = (
                f"{safe_text(value, 80)!r}: differs from the receiver's template ({safe_text(t, 80)!r}); only plain "
                "literals may replace literals"
            )

    for key, value in data.items():
        visit(_norm(key), value, 1)
    if isinstance(template, dict):
        for top, why in merged_problems({_norm(k): v for k, v in template.items()}, check.params).items():
            check.failures.setdefault(top, why)
            check.params = {k: v for k, v in check.params.items() if k.split(_SEP)[0] != top}
    flat = flatten(data)
    check.values = {_display(k): flat.get(k) for k in check.failures}
    check.failures = {_display(k): v for k, v in check.failures.items()}
    return check


@dataclass
class TemplateMatch:
    """The template bundle a received bundle was compared with, and one :class:`ConfigCheck` per config."""

    template: Path | None
    checks: list[ConfigCheck]

    @property
    def failures(self) -> int:
        return sum(len(c.failures) for c in self.checks)


def match_templates(received: dict[str, Any], name: str, templates: list[Path] | None = None) -> TemplateMatch:
    """Compare parsed received configs (``{"configs/train.json": data}``) with each template bundle; return the
    best match (fewest failures, then the template of the same name).

    A config whose name the template does not have fails as a whole.
    """
    dirs = template_dirs() if templates is None else templates
    best: TemplateMatch | None = None
    for tdir in dirs:
        checks = []
        for rel, data in received.items():
            tpath = tdir / rel
            if not tpath.is_file():
                check = ConfigCheck(rel, None)
                check.failures[""] = f"the receiver's template {tdir.name} has no {rel}; configs must be the toolkit's"
                checks.append(check)
                continue
            checks.append(check_against_template(data, load_config(tpath), rel, tpath))
        match = TemplateMatch(tdir, checks)
        if best is None or (match.failures, tdir.name != name) < (best.failures, best.template.name != name):  # type: ignore[union-attr]
            best = match
    if best is None:
        check = ConfigCheck("configs", None)
        check.failures[""] = (
            f"no bundle templates installed to compare with (looked in {TEMPLATE_ENV}, the checkout's bundles/ and "
            "the package's pipeline/_templates); reinstall the toolkit (its wheel carries them) or set the variable"
        )
        return TemplateMatch(None, [check])
    return best


def data_only_problems(data: Any) -> dict[str, str]:
    """``{id: reason}`` for anything in a data-only file (``metadata.json``) MONAI could read as code or ids."""
    problems: dict[str, str] = {}

    def walk(cid: str, value: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            problems[cid] = f"nested deeper than {MAX_DEPTH} levels"
            return
        if isinstance(value, str) and value.startswith(("$", "@", "%")):
            problems[cid] = f"{safe_text(value, 80)!r}: metadata must be plain data ('$', '@', '%' are code or ids)"
        for k, v in _children(value):
            if isinstance(value, dict) and ("#" in str(k) or _SEP in str(k)):
                problems[f"{cid}#{safe_text(k, 40)}"] = "key holds an id separator ('#' or '::')"
            walk(f"{cid}#{safe_text(k, 40)}" if cid else safe_text(k, 40), v, depth + 1)

    walk("", data, 0)
    return problems

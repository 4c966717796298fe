"""Static scan of bundle configs: ``$`` expressions, ``_target_`` strings, macros, options and site paths.

Not the receiving site's gate: a deny-list over a language it parses differently from MONAI cannot be complete
(issue #16), so ``verify`` compares received configs with the receiver's templates instead
(:mod:`pipeline.share.templates`). This scan remains a lint for a site's *own* configs (what may a config name
at all) and finds site paths for ``pack``.

Nothing here evaluates bundle content. ``$`` expressions are parsed with :mod:`ast`, ``_target_`` strings are
resolved only inside trusted namespaces (importing installed ``monai``/``torch``/``pipeline`` modules, never
bundle files).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "ALLOWED_TARGET_ROOTS",
    "ALLOWED_EXPR_ROOTS",
    "DEFAULT_ALIASES",
    "SAFE_BUILTINS",
    "DENIED_NAMES",
    "DENIED_PREFIXES",
    "PIPELINE_CONFIG_MODULES",
    "CodeItem",
    "check_expression",
    "check_target",
    "collect_imports",
    "scan_config",
    "find_absolute_paths",
]

ALLOWED_TARGET_ROOTS = ("monai", "torch", "pipeline")
ALLOWED_EXPR_ROOTS = ("monai", "torch", "pipeline", "numpy", "math")
# Globals MONAI's ConfigParser puts into every expression (monai.bundle.config_parser._default_globals).
DEFAULT_ALIASES: dict[str, str] = {"monai": "monai", "torch": "torch", "np": "numpy", "numpy": "numpy"}
SAFE_BUILTINS = frozenset(
    "abs all any bool dict enumerate filter float int isinstance len list map max min print range reversed "  # noqa: SIM905
    "round set slice sorted str sum tuple zip".split()
)
# Attribute / name parts refused anywhere (besides anything starting with "_"). Bare names outside the allowed
# roots (eval, compile, __import__, ...) are refused anyway; `.eval()` / `.compile()` on objects stay usable.
DENIED_NAMES = frozenset(
    "os sys subprocess builtins importlib shutil pickle marshal ctypes socket runpy pty exec open "  # noqa: SIM905
    "system popen spawn spawnv execv execve fork getattr setattr delattr globals locals vars breakpoint "
    "loads load_library load_inline import_module optional_import instantiate locate run_cmd load_submodules "
    "f_globals f_locals f_back gi_frame cr_frame tb_frame "
    "save savez savez_compressed savetxt tofile write_text write_bytes rmtree unlink rmdir remove".split()
)
# The pipeline modules a bundle config may use (what the shipped bundles reference, and read-only helpers). The
# rest of the package writes, deletes or runs things at a caller-chosen path (atomic writes, pack/import,
# synthetic data, the demo's subprocesses, the CLI) and so is refused, as are file writers inside these modules.
# The pipeline packages/modules a bundle config may name (``_target_`` or ``$`` expressions); everything else in
# ``pipeline`` (apps, share, commands, file writers) is refused.
PIPELINE_CONFIG_MODULES = frozenset(
    "pipeline.bundle.overrides pipeline.checks pipeline.data.datalist pipeline.data.images2d pipeline.evaluation.cases "  # noqa: SIM905
    "pipeline.handlers pipeline.inference pipeline.networks pipeline.transforms pipeline.utils.distributed".split()
)
_PIPELINE_DENIED = re.compile(r"^(write|save|atomic|remove|plot|pack|import|install|extract|make|run|export)")
# Canonical dotted prefixes refused even inside the allowed namespaces: import, download and exec gadgets.
DENIED_PREFIXES = (
    "monai.bundle",
    "monai.apps.utils",
    "monai.apps.auto3dseg",
    "monai.apps.nnunet",
    "monai.utils.module.optional_import",
    "monai.utils.module.instantiate",
    "monai.utils.module.locate",
    "monai.utils.misc.run_cmd",
    "torch.hub",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.distributed.rpc",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.ctypeslib",
    "numpy.testing",
)
_REF = re.compile(r"@(?:\w*)(?:#\w*)*")  # monai.bundle.ReferenceResolver.id_matcher
ABS_PATH = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\)")
_ABS_IN_EXPR = re.compile(r"^(~|[A-Za-z]:[\\/]|\\\\|/(home|Users|mnt|media|root|scratch|gpfs|lustre|nfs|Volumes)/)")
_ALLOWED_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Attribute, ast.Subscript, ast.Slice, ast.Call, ast.keyword,
    ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.comprehension, ast.Lambda, ast.arguments,
    ast.arg, ast.JoinedStr, ast.FormattedValue, ast.Starred, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
    ast.expr_context,
)  # fmt: skip


@dataclass(frozen=True)
class CodeItem:
    """One piece of bundle content that runs code when the bundle is used.

    Attributes:
        item: where it is, as ``<file>#<id>`` with MONAI's ``#`` separators (e.g. ``configs/a.json#net#_target_``).
        kind: ``expression``, ``target``, ``import``, ``macro``, ``option`` or ``logging``.
        value: the code itself (expression text, target name, ...).
        reason: why it is not safe by default; ``None`` when it is.
    """

    item: str
    kind: str
    value: str
    reason: str | None = None


def _name_reason(part: str) -> str | None:
    if part.startswith("_"):
        return f"private/dunder name {part!r} is not allowed"
    if part in DENIED_NAMES:
        return f"{part!r} is not allowed (import/exec/file/introspection)"
    return None


def _canonical(obj: Any) -> str | None:
    if inspect.ismodule(obj):
        return obj.__name__
    mod, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{mod}.{qual}" if isinstance(mod, str) and isinstance(qual, str) else None


@lru_cache(maxsize=4096)
def _resolve(dotted: str, roots: tuple[str, ...]) -> str | None:
    """Reason why ``dotted`` is unsafe, or None. Imports only modules inside ``roots`` (installed code)."""
    parts = dotted.split(".")
    if parts[0] not in roots:
        return f"{dotted!r} is outside the allowed namespaces {'/'.join(roots)}"
    for part in parts:
        if reason := _name_reason(part):
            return reason
    if reason := _pipeline_reason(dotted):
        return reason
    if dotted.startswith(DENIED_PREFIXES):
        return f"{dotted!r} can import, download or run code"
    try:
        obj: Any = importlib.import_module(parts[0])
    except ImportError:
        return f"module {parts[0]!r} is not installed"
    for i in range(1, len(parts)):
        if not inspect.ismodule(obj):
            break  # attributes of a class/function: the name checks above apply
        prefix = ".".join(parts[: i + 1])
        nxt = getattr(obj, parts[i], None)
        if nxt is None:
            try:
                nxt = importlib.import_module(prefix)
            except ImportError:
                return f"{prefix!r} cannot be resolved"
        obj = nxt
        canonical = _canonical(obj)
        if canonical is not None:
            if canonical.split(".")[0] not in roots:
                return f"{prefix!r} resolves to {canonical!r}, outside {'/'.join(roots)}"
            if canonical.startswith(DENIED_PREFIXES):
                return f"{prefix!r} resolves to {canonical!r}, which can import, download or run code"
            if _pipeline_reason(canonical):
                return f"{prefix!r} resolves to {canonical!r}, which a bundle config may not use"
    return None


def _pipeline_reason(dotted: str) -> str | None:
    """Reason why a ``pipeline.*`` name may not appear in a config (module outside the allowed set, or a writer)."""
    parts = dotted.split(".")
    if parts[0] != "pipeline" or len(parts) == 1:
        return None
    allowed = [m for m in PIPELINE_CONFIG_MODULES if dotted == m or dotted.startswith(m + ".")]
    if not allowed and any(m.startswith(dotted + ".") for m in PIPELINE_CONFIG_MODULES):
        return None  # a package on the way to an allowed module (``pipeline.utils`` of ``pipeline.utils.distributed``)
    if not allowed:
        return (
            f"{dotted!r}: this part of pipeline may not be used in a bundle config "
            f"(allowed: {', '.join(sorted(PIPELINE_CONFIG_MODULES))})"
        )
    if any(_PIPELINE_DENIED.match(p) for p in parts[len(max(allowed, key=len).split(".")) :]):
        return f"{dotted!r} writes, deletes or runs something and may not be used in a bundle config"
    return None


@lru_cache(maxsize=1)
def _locator() -> Any:
    from monai.bundle import ComponentLocator

    return ComponentLocator()


def check_target(target: str) -> str | None:
    """Reason why a ``_target_`` string is unsafe, or ``None`` if it stays inside monai/torch/pipeline.

    Short names (``"BasicUNet"``) are resolved the way MONAI does, through its component locator.
    """
    if target.startswith("@"):
        return None  # a reference: the referenced item is scanned on its own
    if "." not in target:
        module = _locator().get_component_module_name(target)
        if module is None:
            return f"short name {target!r} is not a MONAI component (MONAI would pydoc.locate it)"
        target = f"{module[0] if isinstance(module, list) else module}.{target}"
    return _resolve(target, ALLOWED_TARGET_ROOTS)


def attribute_chain(node: ast.AST) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _import_reason(stmt: ast.stmt, aliases: dict[str, str]) -> str | None:
    if isinstance(stmt, ast.ImportFrom):
        if stmt.level or not stmt.module:
            return "relative imports are not allowed"
        pairs = [(f"{stmt.module}.{a.name}", a.asname or a.name) for a in stmt.names]
    else:
        pairs = [(a.name, a.asname or a.name) for a in stmt.names]  # type: ignore[attr-defined]
    for dotted, alias in pairs:
        if "*" in dotted:
            return "star imports are not allowed"
        if reason := _resolve(dotted, ALLOWED_EXPR_ROOTS):
            return reason
        aliases[alias] = dotted
    return None


def check_expression(text: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """Reason why a ``$`` expression is unsafe, or ``None``.

    Safe means: every name is an ``@id`` reference, a local (lambda/comprehension) name, a harmless builtin, or
    rooted at monai/torch/pipeline/numpy/math (or an alias imported from them); no ``_private`` or denied
    attribute; no ``weights_only=False``/``allow_pickle=True``. ``$import``/``$from`` statements follow the same
    namespace rule.

    Args:
        text: the config string, with or without the leading ``$``.
        aliases: extra global names (``alias -> dotted module path``) bound by the bundle's import expressions.
    """
    # MONAI normalises "::" to "#" and replaces "@id" textually before eval; mirror that.
    body = _REF.sub("_REF_", (text[1:] if text.startswith("$") else text).replace("::", "#"))
    known = {**DEFAULT_ALIASES, **(aliases or {})}
    try:
        module = ast.parse(body.strip())
    except SyntaxError as e:
        return f"not valid Python ({e.msg})"
    if module.body and isinstance(module.body[0], (ast.Import, ast.ImportFrom)):
        if len(module.body) != 1:
            return "an import expression must be a single statement"
        return _import_reason(module.body[0], dict(known))
    try:
        tree = ast.parse(body.strip(), mode="eval")
    except SyntaxError as e:
        return f"not a single expression ({e.msg})"
    local = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for args in (n for n in ast.walk(tree) if isinstance(n, ast.arguments)):
        local |= {a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a}
    for node in sorted(ast.walk(tree), key=lambda n: not isinstance(n, ast.Name)):  # names first: clearer reasons
        if not isinstance(node, _ALLOWED_NODES):
            return f"{type(node).__name__} is not allowed in an expression"
        if isinstance(node, ast.Attribute) and (reason := _name_reason(node.attr)):
            return reason
        if isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
            pair = (node.arg, node.value.value)
            if pair in (("weights_only", False), ("allow_pickle", True)):  # noqa: SIM102
                return f"{node.arg}={node.value.value!r} unpickles arbitrary objects"
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id == "_REF_" or node.id in local or node.id in SAFE_BUILTINS:
                continue
            if node.id not in known:
                return _name_reason(node.id) or f"name {node.id!r} is not allowed"
            if reason := _resolve(known[node.id], ALLOWED_EXPR_ROOTS):
                return reason
        chain = attribute_chain(node) if isinstance(node, ast.Attribute) else None
        if chain and chain.split(".")[0] in known and chain.split(".")[0] not in local:
            root, _, rest = chain.partition(".")
            if reason := _resolve(f"{known[root]}.{rest}", ALLOWED_EXPR_ROOTS):
                return reason
    return None


def _walk(data: Any, prefix: str) -> Iterator[tuple[str, str | None, Any]]:
    """Yield ``(id, key, value)`` for every leaf and dict entry, with MONAI ``#`` ids."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield f"{prefix}#{key}", str(key), value
            yield from _walk(value, f"{prefix}#{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield f"{prefix}#{i}", None, value
            yield from _walk(value, f"{prefix}#{i}")


def collect_imports(data: Any) -> dict[str, str]:
    """Aliases bound by safe ``$import`` / ``$from ... import`` strings anywhere in a config."""
    aliases: dict[str, str] = {}
    for _, _, value in _walk(data, ""):
        if isinstance(value, str) and value.startswith("$") and "import" in value:
            try:
                module = ast.parse(_REF.sub("_REF_", value[1:]).strip())
            except SyntaxError:
                continue
            if len(module.body) == 1 and isinstance(module.body[0], (ast.Import, ast.ImportFrom)):
                _import_reason(module.body[0], aliases)
    return aliases


def scan_config(data: Any, rel: str, aliases: Mapping[str, str] | None = None) -> list[CodeItem]:
    """Every code-bearing item of a parsed config: ``$`` expressions, ``_target_``, ``%file`` macros, options.

    Args:
        data: the parsed JSON/YAML content.
        rel: the file's path inside the bundle, used as the id prefix (``configs/train.json``).
        aliases: names bound by import expressions anywhere in the bundle (see :func:`collect_imports`).
    """
    items: list[CodeItem] = []
    for item, key, value in _walk(data, rel):
        if key == "_target_" and isinstance(value, str) and not value.startswith("$"):
            items.append(CodeItem(item, "target", value, check_target(value)))
        elif key == "_mode_" and value not in ("default", "callable", "partial"):
            items.append(CodeItem(item, "option", str(value), f"_mode_={value!r} runs a debugger or is unknown"))
        elif key == "_debug_" and value not in (False, "false", None):
            items.append(CodeItem(item, "option", str(value), "_debug_ starts a debugger"))
        elif key in ("weights_only", "allow_pickle") and str(value).lstrip("$") in (
            ("False", "false") if key == "weights_only" else ("True", "true")
        ):
            items.append(CodeItem(item, "option", f"{key}={value}", f"{key}={value} unpickles arbitrary objects"))
        elif isinstance(value, str) and value.startswith("$"):
            kind = "import" if re.match(r"\$\s*(import|from)\s", value) else "expression"
            items.append(CodeItem(item, kind, value, check_expression(value, aliases)))
        elif isinstance(value, str) and value.startswith("%"):
            path = value[1:].replace("::", "#").split("#", 1)[0]
            if path:
                items.append(CodeItem(item, "macro", value, f"'%' macro reads another file ({path!r}) not scanned"))
    return items


def find_absolute_paths(data: Any, rel: str) -> list[tuple[str, str]]:
    """``(id, value)`` of every string that is an absolute or home-relative path (site paths must not ship).

    Plain strings are refused when they start with ``/``, ``~``, ``C:\\`` or ``\\\\``; inside ``$``
    expressions only literals that look like site roots (``'/home/...'``, ``'~/...'``, ``'D:\\...'``) count,
    because ``@bundle_root + '/models'`` is a relative join.
    """
    found = []
    for item, _, value in _walk(data, rel):
        if not isinstance(value, str):
            continue
        if value.startswith("$"):
            if any(_ABS_IN_EXPR.match(c) for c in re.findall(r"""['"]([^'"]*)['"]""", value)):
                found.append((item, value))
        elif ABS_PATH.match(value) and value != "/":
            found.append((item, value))
    return found

"""``logging.conf`` of a shared bundle: the toolkit's own (:data:`LOGGING_CONF`), and a static scan of a received one.

``logging.config.fileConfig`` reads the file with an *interpolating* ``ConfigParser`` and ``eval()``s ``args=`` and
``kwargs=``; a ``[DEFAULT]`` value or ``%(name)s`` reference is expanded before that ``eval``, so the scan refuses
both instead of checking the raw text only. Pack ships :data:`LOGGING_CONF`, verify accepts nothing else, import
writes it.
"""

from __future__ import annotations

import ast
import configparser
import inspect
import logging
import logging.handlers
import re
from pathlib import Path

from pipeline.share.scan import ABS_PATH, CodeItem, attribute_chain

__all__ = ["LOGGING_CONF", "scan_logging_conf"]

#: the one logging.conf a shared bundle may carry (the toolkit's bundles ship exactly this text)
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
# values fileConfig reads with raw=True (no interpolation): the only place '%' may appear
_RAW_KEYS = ("format", "datefmt", "style", "defaults")


def _literal_reason(text: str) -> str | None:
    """``args=``/``kwargs=``/``defaults=`` in logging.conf are eval'd by fileConfig: allow literals only."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        return f"not valid Python ({e.msg})"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and attribute_chain(node) in ("sys.stdout", "sys.stderr"):
            continue
        if isinstance(node, ast.Name) and node.id == "sys":
            continue
        if not isinstance(node, (ast.Expression, ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.UnaryOp,
                                 ast.USub, ast.Load, ast.Attribute)):  # fmt: skip
            return f"{type(node).__name__} is not a literal (fileConfig eval()s this value)"
        if isinstance(node, ast.Attribute):
            return "only sys.stdout / sys.stderr may be referenced"
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and (ABS_PATH.match(node.value) or ".." in Path(node.value).parts)
        ):
            return f"path {node.value!r} points outside the working directory"
    return None


def _logging_class_reason(name: str, base: type) -> str | None:
    match = re.fullmatch(r"(?:logging\.)?(handlers\.)?([A-Za-z]\w*)", name.strip())
    if not match:
        return f"class {name!r} must name a class of the logging module"
    owner = logging.handlers if match.group(1) else logging
    obj = getattr(owner, match.group(2), None)
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        return f"class {name!r} is not a logging.{base.__name__} subclass"
    return None


def scan_logging_conf(text: str, rel: str) -> list[CodeItem]:
    """Items of a ``logging.config.fileConfig`` file that fileConfig would ``eval`` or import.

    Handler ``class`` must be a ``logging``/``logging.handlers`` Handler; formatter ``class`` a logging
    Formatter; ``args``/``kwargs``/``defaults`` must be literals (``sys.stdout``/``sys.stderr`` allowed).
    """
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error as e:
        return [CodeItem(rel, "logging", "", f"cannot be parsed: {str(e).splitlines()[0]}")]
    items = [
        CodeItem(f"{rel}#DEFAULT#{key}", "logging", value, "[DEFAULT] values are interpolated into every section")
        for key, value in parser.defaults().items()
    ]
    for section in parser.sections():
        for key, value in parser.items(section):
            if "%" in value and not (section.startswith("formatter_") and key in _RAW_KEYS):
                reason = "'%' interpolation: fileConfig expands it before eval()"
                items.append(CodeItem(f"{rel}#{section}#{key}", "logging", value, reason))
    for section in parser.sections():
        base: type = logging.Handler if section.startswith("handler_") else logging.Formatter
        for key, value in parser.items(section):
            item = f"{rel}#{section}#{key}"
            if key == "class" and section.startswith(("handler_", "formatter_")):
                items.append(CodeItem(item, "logging", value, _logging_class_reason(value, base)))
            elif key in ("args", "kwargs", "defaults") and section.startswith(("handler_", "formatter_")):
                items.append(CodeItem(item, "logging", value, _literal_reason(value)))
    return items

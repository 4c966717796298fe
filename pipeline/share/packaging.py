"""Build step that ships the bundle templates inside the package (``pyproject.toml`` ``[tool.setuptools.cmdclass]``).

``bundles/<name>/configs`` in the source checkout is the one source of truth; a wheel gets a copy of its configs
(``*.json``, ``logging.conf``) under ``pipeline/_templates/<name>/configs`` so that verify, import and the folder
checks find the receiver's templates in an installed toolkit too (:func:`pipeline.share.templates.template_dirs`).
An sdist carries the same files under ``bundles/``. Editable installs use the checkout's ``bundles/`` directly.

Loaded by setuptools at build time only (it imports nothing from ``pipeline``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

__all__ = ["PACKAGED_DIR", "BuildPyWithTemplates", "SdistWithTemplates", "template_sources"]

#: where the templates go inside the ``pipeline`` package
PACKAGED_DIR = "_templates"
_ROOT = Path(__file__).resolve().parents[2]


def template_sources(root: Path = _ROOT) -> list[Path]:
    """The template files of the checkout: ``bundles/*/configs/*.json`` and ``logging.conf`` (sorted)."""
    found = [
        p
        for p in (root / "bundles").glob("*/configs/*")
        if p.is_file() and (p.suffix == ".json" or p.name == "logging.conf")
    ]
    return sorted(found)


class BuildPyWithTemplates(build_py):
    """``build_py`` that also copies the bundle templates into ``pipeline/_templates`` (not for editable installs,
    which read ``bundles/`` itself)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        sources = template_sources()
        if not sources:
            raise RuntimeError(
                f"no bundle templates under {_ROOT / 'bundles'}; a wheel without them refuses every bundle"
            )
        for src in sources:
            rel = src.relative_to(_ROOT / "bundles")
            dst = Path(self.build_lib) / "pipeline" / PACKAGED_DIR / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


class SdistWithTemplates(sdist):
    """``sdist`` that carries ``bundles/*/configs`` so a wheel built from it still gets the templates."""

    def make_distribution(self) -> None:
        self.filelist.extend(src.relative_to(_ROOT).as_posix() for src in template_sources())
        super().make_distribution()

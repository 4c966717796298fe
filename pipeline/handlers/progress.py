"""Progress bar for the trainer (Ignite's, quiet when not a terminal)."""

from __future__ import annotations

from ignite.handlers import ProgressBar as _IgniteProgressBar

from pipeline.handlers.drift import DriftHandler  # noqa: F401 split

__all__ = ["ProgressBar"]


class ProgressBar(_IgniteProgressBar):
    """Ignite's tqdm progress bar, homed in ``pipeline`` so bundles that show one pass ``pipeline verify``
    without trusting the whole ``ignite`` namespace. Same arguments as ``ignite.handlers.ProgressBar``."""

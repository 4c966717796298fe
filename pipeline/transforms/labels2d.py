"""2D label masks -> class indices: index masks checked, RGB(A)-coded masks mapped with a colour -> class map."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

__all__ = ["MaskToClassesd", "label_channels", "label_colors_from_dataset", "parse_label_colors"]

logger = logging.getLogger(__name__)


def parse_label_colors(
    label_colors: Mapping[Any, Sequence[int]] | Sequence[Sequence[int]], num_classes: int | None = None
) -> tuple[list[int], np.ndarray]:
    """Validate a colour -> class map.

    Args:
        label_colors: ``{"0": [0, 0, 0], "1": [255, 0, 0]}`` (class index -> colour) or a list indexed by class;
            colours have 1 (grey), 3 (RGB) or 4 (RGBA) integer values, all the same length, all different.
        num_classes: classes of the network; class indices must be below it.

    Returns:
        ``(classes, colours (K, L) float64)``.
    """
    example = '{"0": [0, 0, 0], "1": [255, 0, 0]}'
    items = list(label_colors.items()) if isinstance(label_colors, Mapping) else list(enumerate(label_colors))
    if not items:
        raise ValueError(f"'label_colors' is empty; expected class index -> colour, e.g. {example}.")
    classes, colours = [], []
    for key, colour in items:
        try:
            cls = int(key)
            values = [int(v) for v in colour]
            if cls < 0 or any(v != c for v, c in zip(values, colour, strict=True)) or not 0 < len(values) <= 4:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(
                f"'label_colors' entry {key!r}: {colour!r}; expected a class index >= 0 and a list of 1, 3 or 4 "
                f"integer channel values, e.g. {example}."
            ) from None
        if num_classes is not None and cls >= num_classes:
            raise ValueError(f"'label_colors' class {cls} is not below num_classes={num_classes} (class_names).")
        classes.append(cls)
        colours.append(values)
    if len({len(c) for c in colours}) != 1:
        raise ValueError(f"'label_colors' colours must all have the same length, got {[c for c in colours]}.")
    seen: dict[tuple[int, ...], int] = {}
    for cls, colour in zip(classes, colours, strict=True):
        if tuple(colour) in seen:
            raise ValueError(f"'label_colors': colour {colour} is given to classes {seen[tuple(colour)]} and {cls}.")
        seen[tuple(colour)] = cls
    return classes, np.asarray(colours, dtype=np.float64)


def _source(x: Any) -> str:
    meta = getattr(x, "meta", None)
    src = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    return str(src) if src else "<in memory>"


class MaskToClassesd(mt.MapTransform):
    """Label ``(C, H, W)`` -> class indices ``(1, H, W)``: index masks checked, RGB(A)-coded masks mapped.

    Args:
        keys: label keys.
        label_colors: None for index masks (one channel of class indices); else see :func:`parse_label_colors`.
            An RGBA mask matches RGB colours on its first three channels.
        color_tolerance: largest per-channel difference still counted as a match (0: exact).
        num_classes: checks the ``label_colors`` class indices.
    """

    def __init__(
        self,
        keys: Any = "label",
        label_colors: Mapping[Any, Sequence[int]] | Sequence[Sequence[int]] | None = None,
        color_tolerance: float = 0,
        num_classes: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.classes: list[int] = []
        self.colours: np.ndarray | None = None
        if label_colors:
            self.classes, self.colours = parse_label_colors(label_colors, num_classes)
        if color_tolerance < 0:
            raise ValueError(f"'color_tolerance' must be >= 0, got {color_tolerance!r}.")
        self.tolerance = float(color_tolerance)

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.map(d[key])
        return d

    def map(self, label: Any, source: str | None = None) -> Any:
        """One label ``(C, H, W)`` -> ``(1, H, W)`` (a MetaTensor keeps its metadata).

        Messages name ``source``, by default the MetaTensor's file."""
        src = source or _source(label)
        arr = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        if self.colours is None:
            if arr.shape[0] != 1:
                raise ValueError(
                    f"{src}: label has {arr.shape[0]} channels (shape {tuple(arr.shape)}); expected an index mask (one "
                    'channel of class indices). Fix: for colour-coded masks set label_colors, e.g. {"0": [0, 0, 0], '
                    '"1": [255, 0, 0]}.'
                )
            return label
        n = self.colours.shape[1]
        if arr.shape[0] != n and not (arr.shape[0] == 4 and n == 3) and not (arr.shape[0] == 2 and n == 1):
            raise ValueError(
                f"{src}: label has {arr.shape[0]} channel(s) but 'label_colors' colours have {n} values; expected "
                f"{'an RGB(A)' if n == 3 else 'a grey' if n == 1 else f'a {n}-channel'} mask. Fix: give matching "
                "masks or colours."
            )
        out = np.full(arr.shape[1:], -1, dtype=np.int64)
        for cls, colour in zip(self.classes, self.colours, strict=True):
            hit = (np.abs(arr[:n] - colour[:, None, None]).max(0) <= self.tolerance) & (out < 0)
            out[hit] = cls
        unknown = out < 0
        if unknown.any():
            values, first, counts = np.unique(arr[:n, unknown].T, axis=0, return_index=True, return_counts=True)
            rows, cols = np.nonzero(unknown)
            shown = [
                f"{[int(v) for v in values[i]]} ({counts[i]} px, first at row {rows[first[i]]}, col {cols[first[i]]})"
                for i in np.argsort(-counts)[:5]
            ]
            known = {int(c): [int(v) for v in col] for c, col in zip(self.classes, self.colours, strict=True)}
            raise ValueError(
                f"{src}: {int(unknown.sum())} pixel(s) have colours not in 'label_colors': {', '.join(shown)}. "
                f"Expected one of {known} (class: colour). Fix: add the colour to label_colors if it is a class, or "
                "repair the mask (smoothed edges and JPEG compression make in-between colours: save masks as PNG "
                "without anti-aliasing, or set color_tolerance)."
            )
        result = torch.as_tensor(out[None], dtype=torch.float32)
        return MetaTensor(result, meta=dict(label.meta)) if isinstance(label, MetaTensor) else result


def label_channels(label_colors: Any) -> int:
    return parse_label_colors(label_colors)[1].shape[1] if label_colors else 1


def label_colors_from_dataset(dataset_dir: str | Path) -> dict[str, list[int]] | None:
    """``label_colors`` of a dataset's ``dataset.json`` (``synth --dims 2 --label-format rgb`` writes them), validated;
    None when there are none.

    Raises:
        ValueError: the colours are malformed (the message names ``dataset.json``).
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return None
    colours = json.loads(path.read_text()).get("label_colors")
    if not colours:
        return None
    try:
        parse_label_colors(colours)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    items = colours.items() if isinstance(colours, Mapping) else enumerate(colours)
    return {str(k): [int(v) for v in c] for k, c in items}

"""The network check of verify: build ``network_def`` from the *receiver's template* with the sender's literal
parameters (sized on the meta device first), load ``models/model.pt`` strictly, run one forward pass of the
metadata's input shape. Nothing received is evaluated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pipeline.share.files import load_config
from pipeline.share.report import FAIL, PASS, WARN, VerifyReport, first_line
from pipeline.share.templates import TemplateMatch, safe_text

__all__ = ["check_network_fits"]


def _load_meta(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _input_shape(meta: dict) -> tuple[list[int], int] | None:
    """``([1, C, *spatial], out_channels)`` from metadata (``32*n`` -> 32), or None if absent or too large."""
    fmt = meta.get("network_data_format", {})
    image, pred = fmt.get("inputs", {}).get("image", {}), fmt.get("outputs", {}).get("pred", {})
    shape = [1, int(image.get("num_channels", 1))]
    for s in image.get("spatial_shape", []):
        m = re.fullmatch(r"(\d+)(\*n|\*\*p)?", str(s).replace(" ", ""))
        if not m:
            return None
        shape.append(int(m.group(1)))  # n = 1, p = 1
    voxels = 1
    for s in shape:
        voxels *= s
    if len(shape) < 4 or voxels > 2**22 or shape[1] > 16:
        return None
    return shape, int(pred.get("num_channels", 0))


def _network_template(match: TemplateMatch) -> tuple[Path, dict[str, Any]] | None:
    for name in ("configs/inference.json", "configs/train.json"):
        for check in match.checks:
            if check.rel == name and check.template is not None and "network_def" in load_config(check.template):
                return check.template, check.params
    return None


def check_network_fits(report: VerifyReport, root: Path, match: TemplateMatch | None) -> None:
    """Build ``network_def`` from the *receiver's template* with the sender's literal parameters, then load the
    weights strictly and run one forward pass of the metadata's input shape. Nothing received is evaluated."""
    import torch
    from monai.bundle import ConfigParser

    found = _network_template(match) if match is not None else None
    if found is None:
        report.add("network", "network_def", WARN, "no template config defines network_def; not built")
        return
    template, params = found
    where = f"template {template.parent.parent.name}/{template.name}#network_def"

    def build(device: str) -> Any:
        parser = ConfigParser()
        parser.read_config(str(template))
        for cid, value in params.items():
            parser[cid] = value
        parser["bundle_root"] = str(root)
        with torch.device(device):
            return parser.get_parsed_content("network_def")

    try:
        state = torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
        if isinstance(state, dict) and len(state) == 1 and next(iter(state)) in ("model", "network", "state_dict"):
            state = next(iter(state.values()))  # a CheckpointSaver dict around a single network
        have = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
        shape_only = build("meta")  # the sender's parameters size the network: count before allocating it
        need = sum(t.numel() for t in (*shape_only.parameters(), *shape_only.buffers()))
        if need > have:
            raise ValueError(f"with the sender's parameters it has {need} values, models/model.pt only {have}")
        net = build("cpu")
        net.load_state_dict(state, strict=True)
    except Exception as e:
        report.add("network", "models/model.pt", FAIL, f"does not fit {where}: {safe_text(first_line(e), 300)}")
        return
    report.add("network", "models/model.pt", PASS, f"state dict matches {where} exactly (strict load)")
    meta = _load_meta(root / "configs" / "metadata.json")
    try:
        shapes = _input_shape(meta) if isinstance(meta, dict) else None
    except (AttributeError, TypeError, ValueError):
        shapes = None
    if shapes is None:
        report.add("network", "network_def", WARN, "no concrete, small input shape in metadata; forward pass skipped")
        return
    shape, out_channels = shapes
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(shape))
        got = list(out.shape)
        if got[1] != out_channels or got[2:] != shape[2:]:
            raise ValueError(f"output shape {got}, metadata expects [1, {out_channels}, {shape[2:]}]")
    except Exception as e:
        report.add("network", "network_def", FAIL, f"forward pass of {shape}: {safe_text(first_line(e), 300)}")
        return
    report.add("network", "network_def", PASS, f"forward pass {shape} -> {got} matches metadata")

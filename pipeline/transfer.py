"""Transfer learning: load local pretrained weights into a PretrainedUNet, freeze stages, build param groups, drift.

Loading maps the source naming onto ours (``encoder.*``, ``decoder.*``, ``segmentation_head.*``):

=====================  ====================================================  ==================================
source                 example key                                           becomes
=====================  ====================================================  ==================================
FlexibleUNet / bundle  ``encoder.layer1.0.conv1.weight``                     unchanged
MONAI / torchvision    ``layer1.0.conv1.weight``, ``conv1.weight``           ``encoder.`` + key
ResNet
MedicalNet             ``module.layer1.0.conv1.weight``                      ``module.`` dropped, then as above
EfficientNet-PyTorch   ``_blocks.5._expand_conv.weight``                     ``encoder._blocks.3.5._expand_...``
=====================  ====================================================  ==================================

Everything is read with ``torch.load(..., weights_only=True)`` or ``safetensors``; nothing is downloaded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.networks.nets.resnet import resnet_params
from monai.networks.utils import copy_model_state
from torch import nn

from pipeline.atomic import write_text
from pipeline.networks import UNUSED_STAGE, PretrainedUNet

__all__ = [
    "DEFAULT_EXCLUDE",
    "ArchitectureMismatchError",
    "LayerDrift",
    "LoadReport",
    "adapt_input_channels",
    "align_state_dict",
    "as_unet",
    "bundle_class_names",
    "freeze",
    "layer_drift",
    "load_pretrained",
    "param_groups",
    "plot_drift",
    "read_state_dict",
    "unfreeze",
    "write_drift_csv",
]

logger = logging.getLogger(__name__)

#: classifier heads of ImageNet / MedicalNet checkpoints (searched in source keys, ``module.`` removed)
DEFAULT_EXCLUDE: tuple[str, ...] = (r"^fc\.", r"^conv_seg\.", r"^classifier\.")
_CHECKPOINT_KEYS = ("network", "model", "state_dict", "model_state_dict", "net")
_STEM_KEYS = ("encoder.conv1.weight", "encoder._conv_stem.weight")
_HEAD_W, _HEAD_B = "segmentation_head.0.weight", "segmentation_head.0.bias"
_SCOPES = ("encoder.", "decoder.", "segmentation_head.")
_UNUSED_DRIFT = r"^(module\.)?encoder\.(_conv_head|_bn1|_fc)\."
_PathLike = str | os.PathLike


class ArchitectureMismatchError(ValueError):
    """The source weights are for a different architecture (depth, block type, widths or spatial dims)."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did; every list holds target (our) key names unless noted."""

    source: str
    source_format: str = "unknown"
    target_total: int = 0
    loaded: list[str] = field(default_factory=list)
    skipped_by_pattern: list[str] = field(default_factory=list)  # source keys
    shape_mismatched: list[dict[str, Any]] = field(default_factory=list)  # {key, source_shape, target_shape}
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # source keys
    adapted: list[dict[str, str]] = field(default_factory=list)  # {key, how}

    def summary(self) -> str:
        lines = [
            f"loaded {len(self.loaded)}/{self.target_total} tensors from {self.source} ({self.source_format}); "
            f"adapted {len(self.adapted)}, skipped by pattern {len(self.skipped_by_pattern)}, "
            f"shape mismatched {len(self.shape_mismatched)}, missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}"
        ]
        lines += [f"  adapted {a['key']}: {a['how']}" for a in self.adapted]
        lines += [
            f"  shape {m['key']}: source {m['source_shape']} vs network {m['target_shape']}"
            for m in self.shape_mismatched
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: _PathLike) -> Path:
        """Write the report as JSON (atomically); returns the path."""
        return write_text(Path(path), json.dumps(self.to_dict(), indent=2))


# ------------------------------------------------------------------------------------------------ reading sources
def _bundle_member(zf: zipfile.ZipFile, suffix: str) -> str | None:
    names = [n for n in zf.namelist() if n == suffix or n.endswith("/" + suffix)]
    return min(names, key=len) if names else None


def _torch_load(f: Any, name: str) -> Any:
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        raise ValueError(
            f"{name}: not loadable with torch.load(weights_only=True) ({type(e).__name__}: {str(e)[:200]}). "
            "Expected a state dict of tensors. Fix: re-save it with torch.save(model.state_dict(), path)."
        ) from e


def _extract_state(obj: Any, name: str) -> dict[str, torch.Tensor]:
    for _ in range(3):  # unwrap {"network": {...}}, {"state_dict": {...}}, ...
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in _CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, Mapping) else {}
    if not state:
        got = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(
            f"{name}: no tensors found. Expected a state dict, or a checkpoint dict with one of the keys "
            f"{list(_CHECKPOINT_KEYS)}; got {got}. Fix: point to the model weights file."
        )
    return state


def read_state_dict(source: _PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a bundle directory or zip (``models/model.pt``), a ``.pt``/``.pth`` file (plain state
    dict or checkpoint dict with a ``network``/``model``/``state_dict`` key) or a ``.safetensors`` file."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"Pretrained source {str(path)!r} does not exist. Expected a bundle directory or zip, or a "
            ".pt/.pth/.safetensors file. Fix: check the path."
        )
    if path.is_dir():
        for rel in ("models/model.pt", "models/model.safetensors", "models/model.pth"):
            if (path / rel).is_file():
                return read_state_dict(path / rel)
        found = sorted(p.name for p in (path / "models").glob("*")) if (path / "models").is_dir() else []
        raise FileNotFoundError(
            f"Bundle directory {str(path)!r}: expected models/model.pt, found models/ = {found}. "
            "Fix: train or import the bundle first, or pass the checkpoint file itself."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            member = _bundle_member(zf, "models/model.pt")
            if member is not None:  # a bundle zip (a torch .pt file is a zip too, without this member)
                return _extract_state(_torch_load(io.BytesIO(zf.read(member)), f"{path}!{member}"), f"{path}!{member}")
            if path.suffix == ".zip":
                raise FileNotFoundError(
                    f"Bundle zip {str(path)!r}: expected a member '<bundle>/models/model.pt', found none. "
                    "Fix: pack the bundle with its trained weights (python -m pipeline pack)."
                )
    return _extract_state(_torch_load(path, str(path)), str(path))


def bundle_class_names(source: _PathLike) -> list[str] | None:
    """Class names from a bundle's ``configs/metadata.json`` (``network_data_format.outputs.pred.channel_def``)."""
    path = Path(source)
    try:
        if path.is_dir():
            meta = json.loads((path / "configs" / "metadata.json").read_text(encoding="utf-8"))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = _bundle_member(zf, "configs/metadata.json")
                if member is None:
                    return None
                meta = json.loads(zf.read(member))
        else:
            return None
        channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        return [str(channel_def[str(i)]) for i in range(len(channel_def))]
    except (OSError, KeyError, ValueError, TypeError):
        return None


# ------------------------------------------------------------------------------------------------ key mapping
def align_state_dict(
    state: Mapping[str, torch.Tensor], target_keys: Iterable[str]
) -> tuple[str, list[tuple[str, str, str, torch.Tensor]]]:
    """Map source key names onto FlexibleUNet names.

    Returns:
        ``(format, [(source_key, source_key_without_module_prefix, target_key, tensor), ...])``.
    """
    keys = list(state)
    strip = "module." if keys and all(k.startswith("module.") for k in keys) else ""
    names = [k[len(strip) :] for k in keys]
    if any(n.startswith(_SCOPES) for n in names):
        fmt, rename = "flexibleunet", (lambda n: n)
    elif any(n.startswith(("_conv_stem.", "_blocks.")) for n in names):
        if any(re.match(r"_blocks\.\d+\.\d+\.", n) for n in names):
            fmt, rename = "monai-efficientnet", (lambda n: "encoder." + n)
        else:
            stack = {}  # global block index -> MONAI stack index, read off the target names
            for t in target_keys:
                m = re.match(r"encoder\._blocks\.(\d+)\.(\d+)\.", t)
                if m:
                    stack[m.group(2)] = m.group(1)

            def rename(n: str) -> str:
                m = re.match(r"_blocks\.(\d+)\.(.*)", n)
                return (
                    f"encoder._blocks.{stack.get(m.group(1), '?')}.{m.group(1)}.{m.group(2)}" if m else "encoder." + n
                )

            fmt = "efficientnet-pytorch"
    elif any(n.startswith(("conv1.", "layer1.")) for n in names):
        fmt, rename = ("medicalnet-resnet" if strip else "resnet"), (lambda n: "encoder." + n)
    else:
        fmt, rename = "unknown", (lambda n: n)
    return fmt, [(k, n, rename(n), state[k]) for k, n in zip(keys, names, strict=True)]


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a stem kernel ``(C_out, C_in_old, *k)`` to ``(C_out, in_channels, *k)``.

    Fewer channels: old channels are summed cyclically (3 -> 1 sums RGB). More channels: old channels are repeated
    cyclically and each copy is divided by its number of copies (1 -> 3: /3; 3 -> 6: x 3/6). Either way an image
    that is constant across channels gives the same stem output.
    """
    old = weight.shape[1]
    if in_channels == old:
        return weight.clone()
    if in_channels < old:
        out = torch.zeros((weight.shape[0], in_channels, *weight.shape[2:]), dtype=weight.dtype)
        for i in range(old):
            out[:, i % in_channels] += weight[:, i]
        return out
    idx = torch.arange(in_channels) % old
    counts = torch.bincount(idx, minlength=old).to(weight.dtype)[idx]
    return weight[:, idx] / counts.view(1, -1, *([1] * (weight.dim() - 2)))


def _layout(keys: Iterable[str]) -> str:
    blocks: dict[str, int] = {}
    bottleneck = False
    for k in keys:
        m = re.match(r"encoder\.(layer\d|_blocks\.\d+)\.(\d+)\.", k)
        if m:
            blocks[m.group(1)] = max(blocks.get(m.group(1), 0), int(m.group(2)) + 1)
            bottleneck |= ".conv3." in k
    if not blocks or not any(k.startswith("layer") for k in blocks):
        return f"{len(blocks)} block stacks" if blocks else "no encoder blocks"
    layers = [blocks.get(f"layer{i}", 0) for i in range(1, 5)]
    kind = "bottleneck" if bottleneck else "basic"
    name = next((n for n, p in resnet_params.items() if p[1] == layers and p[0] == kind), "unknown resnet")
    return f"{name}-like ({layers} {kind} blocks)"


# ------------------------------------------------------------------------------------------------ loading
def _unwrap(network: nn.Module) -> nn.Module:
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


def as_unet(network: nn.Module) -> PretrainedUNet:
    net = _unwrap(network)
    if not isinstance(net, PretrainedUNet):
        raise TypeError(
            f"Expected a pipeline.networks.PretrainedUNet (optionally DDP-wrapped), got {type(net).__name__}. "
            "Fix: build the network with _target_: pipeline.networks.PretrainedUNet."
        )
    return net


def _class_pairs(
    mapping: Mapping[str, str] | None,
    src_names: Sequence[str] | None,
    tgt_names: Sequence[str] | None,
    src_out: int,
    tgt_out: int,
) -> list[tuple[int, int]] | None:
    if mapping is None:
        if src_names is None or tgt_names is None or list(src_names) == list(tgt_names):
            return None
        mapping = {n: n for n in tgt_names if n in src_names}
    elif src_names is None or tgt_names is None:
        raise ValueError(
            "'class_mapping' needs class names on both sides, got "
            f"source_class_names={src_names!r}, target_class_names={tgt_names!r}. Fix: pass both (a bundle source "
            "provides its own from configs/metadata.json channel_def)."
        )
    for key, names, n in (("source_class_names", src_names, src_out), ("target_class_names", tgt_names, tgt_out)):
        if len(names) != n:
            raise ValueError(f"'{key}' must have {n} names (one per head output channel), got {list(names)!r}.")
    pairs = []
    for new, old in mapping.items():
        for key, name, names in (("target", new, tgt_names), ("source", old, src_names)):
            if name not in names:
                raise ValueError(f"'class_mapping': {name!r} is not a {key} class; valid: {list(names)}.")
        pairs.append((list(tgt_names).index(new), list(src_names).index(old)))
    return pairs


def load_pretrained(
    network: nn.Module,
    source: _PathLike,
    *,
    strict: bool = False,
    exclude: str | Sequence[str] = DEFAULT_EXCLUDE,
    class_mapping: Mapping[str, str] | None = None,
    source_class_names: Sequence[str] | None = None,
    target_class_names: Sequence[str] | None = None,
    adapt_channels: bool = True,
    report_path: _PathLike | None = None,
    verify: bool = True,
    trust: Sequence[str] = (),
) -> LoadReport:
    """Load local pretrained weights into ``network`` (in place) and report what happened.

    Args:
        network: a PretrainedUNet/FlexibleUNet, optionally wrapped in DDP/DataParallel.
        source: bundle directory or zip, ``.pt``/``.pth`` state-dict or checkpoint file, or ``.safetensors``.
        strict: raise if anything is shape-mismatched, missing or unexpected (adaptations are allowed).
        exclude: regexes searched in source keys (``module.`` removed) and in our key names; matches are skipped.
        class_mapping: ``{"new class": "old class"}``: copy those output channels of ``segmentation_head``. Without
            it, when both class-name lists are known, classes with the same name are copied.
        source_class_names: class names of the source head (read from a bundle's metadata.json when omitted).
        target_class_names: class names of ``network``'s output channels.
        adapt_channels: adapt the stem kernel to a different ``in_channels`` (see :func:`adapt_input_channels`).
        report_path: also write the report there as JSON.
        verify: a bundle ``.zip`` (another site's) is verified with :func:`pipeline.share.open_verified_bundle`
            first — hashes, schema, code scan — and read from the verified copy. ``False`` reads it as is.
        trust: items (``_target_`` names, expression ids) the verification may accept; see ``pipeline verify``.

    Raises:
        ArchitectureMismatchError: different depth/block type/widths or 2D weights into a 3D model (no partial load).
        ValueError: ``strict=True`` failures, nothing matched, bad class mapping or unreadable file.
    """
    net = _unwrap(network)
    if verify and Path(source).suffix == ".zip" and Path(source).is_file():
        from pipeline.share import open_verified_bundle

        logger.info("verifying bundle zip %s before loading its weights", source)
        source = open_verified_bundle(source, trust=trust)
    state = read_state_dict(source)
    if source_class_names is None:
        source_class_names = bundle_class_names(source)
    target = net.state_dict()
    fmt, items = align_state_dict(state, target)
    report = LoadReport(source=str(source), source_format=fmt, target_total=len(target))
    pats = [re.compile(p) for p in ([exclude] if isinstance(exclude, str) else exclude)]

    def excluded(*names: str) -> bool:
        return any(p.search(n) for p in pats for n in names)

    updates: dict[str, torch.Tensor] = {}
    mismatched: dict[str, torch.Tensor] = {}
    for src_key, name, tgt, value in items:
        if excluded(name, tgt):
            report.skipped_by_pattern.append(src_key)
        elif tgt not in target:
            report.unexpected.append(src_key)
        elif value.shape == target[tgt].shape:
            updates[tgt] = value
        else:
            mismatched[tgt] = value
            report.shape_mismatched.append(
                {"key": tgt, "source_shape": list(value.shape), "target_shape": list(target[tgt].shape)}
            )
    seen = set(updates) | set(mismatched)
    unused = {k for k in target if isinstance(net, PretrainedUNet) and net.stage_of(k) == UNUSED_STAGE}
    report.missing = [
        k for k in target if k not in seen | unused and not excluded(k) and not k.endswith("num_batches_tracked")
    ]
    stem_ok, head_ok = _check_architecture(net, source, fmt, items, target, mismatched, report)

    # plan the adaptations (nothing is modified before the strict check)
    adapted: dict[str, torch.Tensor] = {}
    for key in stem_ok if adapt_channels else ():
        old, new = mismatched[key].shape[1], target[key].shape[1]
        adapted[key] = adapt_input_channels(mismatched[key], new)
        how = "summed cyclically" if new < old else "repeated cyclically, divided by copies"
        report.adapted.append({"key": key, "how": f"input channels {old} -> {new}: {how}"})
    head_w, head_b = (mismatched.get(k, updates.get(k)) for k in (_HEAD_W, _HEAD_B))
    pairs: list[tuple[int, int]] | None = None
    reset_head = False
    if head_w is not None and head_b is not None:
        src_out, tgt_out = head_w.shape[0], target[_HEAD_W].shape[0]
        pairs = _class_pairs(class_mapping, source_class_names, target_class_names, src_out, tgt_out)
        reset_head = pairs is not None or src_out != tgt_out
    if reset_head:
        tn, sn = target_class_names, source_class_names
        copied = [f"{tn[t] if tn else t}<-{sn[s] if sn else s}" for t, s in pairs or []]
        how = f"out_channels {src_out} -> {tgt_out}: freshly initialised; copied channels {copied}"
        report.adapted.append({"key": "segmentation_head.0", "how": how})
        updates.pop(_HEAD_W, None), updates.pop(_HEAD_B, None)
    done = set(adapted) | (head_ok if reset_head else set())
    report.shape_mismatched = [m for m in report.shape_mismatched if m["key"] not in done]
    report.loaded = [k for k in target if k in updates]

    failures = [*(m["key"] for m in report.shape_mismatched), *report.missing, *report.unexpected]
    if strict and failures:
        raise ValueError(
            f"load_pretrained(strict=True) from {source}: {len(failures)} failures {failures[:10]}.\n"
            f"{report.summary()}\nFix: pass strict=False to load what matches, or exclude=[regex] for unwanted keys."
        )
    if not report.loaded and not adapted and not reset_head:
        raise ValueError(
            f"{source}: no tensor matched the network (detected format {fmt!r}). Expected MONAI, torchvision ResNet, "
            f"MedicalNet or EfficientNet-PyTorch naming; got keys {list(state)[:5]}, network keys {list(target)[:5]}."
        )

    if reset_head:
        conv: Any = net.segmentation_head[0]  # type: ignore[index]
        conv.reset_parameters()
        w, b = conv.weight.detach().clone(), conv.bias.detach().clone()
        for t, s in pairs or []:
            w[t], b[t] = head_w[s], head_b[s]  # type: ignore[index]
        adapted.update({_HEAD_W: w, _HEAD_B: b})
    copy_model_state(net, {**updates, **adapted}, inplace=True)
    for line in report.summary().splitlines():
        logger.info(line)
    if report_path is not None:
        report.to_json(report_path)
    return report


def _check_architecture(
    net: nn.Module,
    source: _PathLike,
    fmt: str,
    items: list[tuple[str, str, str, torch.Tensor]],
    target: Mapping[str, torch.Tensor],
    mismatched: Mapping[str, torch.Tensor],
    report: LoadReport,
) -> tuple[set[str], set[str]]:
    """Raise if the source is a different architecture; return (adaptable stem keys, adaptable head keys)."""
    for key, v in mismatched.items():
        if v.dim() != target[key].dim():
            raise ArchitectureMismatchError(
                f"{source}: {key} has shape {list(v.shape)} ({v.dim() - 2}D kernel) but the network expects "
                f"{list(target[key].shape)} ({target[key].dim() - 2}D). Fix: use {target[key].dim() - 2}D pretrained "
                f"weights, or build the network with spatial_dims={v.dim() - 2}."
            )
    stem = {
        k
        for k, v in mismatched.items()
        if k in _STEM_KEYS and v.shape[:1] + v.shape[2:] == target[k].shape[:1] + target[k].shape[2:]
    }
    head = {k for k, v in mismatched.items() if k in (_HEAD_W, _HEAD_B) and v.shape[1:] == target[k].shape[1:]}
    scopes = tuple(s for s in _SCOPES if any(t.startswith(s) and t in target for _, _, t, _ in items))
    unexpected = [
        t for s, _, t, _ in items if s in report.unexpected and t.startswith(_SCOPES) and ".downsample." not in t
    ]
    missing = [k for k in report.missing if k.startswith(scopes) and ".downsample." not in k] if scopes else []
    shapes = [k for k in mismatched if k not in stem | head]
    if unexpected or missing or shapes:
        raise ArchitectureMismatchError(
            f"{source} ({fmt}) does not fit this {getattr(net, 'backbone', type(net).__name__)} network: source "
            f"encoder is {_layout(t for _, _, t, _ in items)}, network encoder is {_layout(target)}. Unexpected: "
            f"{unexpected[:5]}; missing: {missing[:5]}; shape mismatched: {shapes[:5]}. Fix: build the network with "
            "the source's backbone/decoder_channels, or exclude=[regex] parts you do not want (e.g. '^decoder\\.')."
        )
    if any(".downsample." in k for k in report.unexpected + report.missing):
        logger.warning("%s: shortcut type differs (downsample weights unused/missing); reported, not loaded.", source)
    return stem, head


# ------------------------------------------------------------------------------------------------ freezing, groups
def freeze(network: nn.Module, stages: str | Iterable[str] | None = None, regex: str | None = None) -> list[str]:
    """Freeze stages (names or ``"encoder"``/``"all"``) and/or parameters whose name matches ``regex``.

    Frozen parameters get ``requires_grad=False``; norm layers whose parameters are all frozen stay in eval mode
    even after ``network.train()``. With neither argument every stage is frozen.

    Returns:
        names of the parameters that changed.
    """
    return as_unet(network).set_trainable(stages, regex=regex, trainable=False)


def unfreeze(network: nn.Module, stages: str | Iterable[str] | None = None, regex: str | None = None) -> list[str]:
    """Inverse of :func:`freeze` (unused EfficientNet parameters stay frozen)."""
    return as_unet(network).set_trainable(stages, regex=regex, trainable=True)


def param_groups(
    network: nn.Module,
    lr: float,
    stage_lr_scale: Mapping[str, float] | None = None,
    weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per stage (input -> output), frozen stages included.

    Every stage has its group from the start, so an optimizer ``state_dict`` saved at any point of a staged
    unfreezing schedule loads into a freshly built optimizer. Each group carries ``name`` (the stage),
    ``lr = lr * scale`` and ``lr_scale``.

    Args:
        network: a PretrainedUNet (optionally DDP-wrapped).
        lr: base learning rate.
        stage_lr_scale: ``{stage or "encoder"/"all": scale}``; specific stages override aliases; default 1.0.
        weight_decay: set on every group when given.
    """
    net = as_unet(network)
    scales = dict.fromkeys(net.stage_names, 1.0)
    items = sorted((stage_lr_scale or {}).items(), key=lambda kv: kv[0] not in ("all", "encoder"))
    for key, scale in items:
        if not isinstance(scale, (int, float)) or scale < 0:
            raise ValueError(f"'stage_lr_scale[{key!r}]' must be a number >= 0, got {scale!r}.")
        for stage in net.expand_stages(key):
            scales[stage] = float(scale)
    groups = []
    for stage in net.stage_names:
        group: dict[str, Any] = {
            "name": stage,
            "params": [p for _, p in net.named_stage_parameters(stage)],
            "lr": lr * scales[stage],
            "lr_scale": scales[stage],
        }
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        groups.append(group)
    return groups


# ------------------------------------------------------------------------------------------------ drift
class LayerDrift(NamedTuple):
    """Relative change of one layer: ``||W_after - W_before|| / ||W_before||`` over its weight and bias."""

    layer: str
    rel_change: float


def _state_of(obj: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return _unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj


def layer_drift(
    before_state: nn.Module | Mapping[str, torch.Tensor],
    after_state: nn.Module | Mapping[str, torch.Tensor],
    exclude: str | None = _UNUSED_DRIFT,
) -> list[LayerDrift]:
    """Per-layer relative weight change, ordered input -> output (the order of ``after_state``).

    A layer is a key prefix (``encoder.layer1.0.conv1``); its weight and bias are measured together. Norm running
    statistics and keys missing or shaped differently on one side are skipped. A layer whose ``before`` weights
    are all zero gets ``inf`` if it changed, else 0.
    """
    before, after = _state_of(before_state), _state_of(after_state)
    pattern = re.compile(exclude) if exclude else None
    sums: dict[str, list[float]] = {}
    skipped = 0
    for key, a in after.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")) or not a.is_floating_point():
            continue
        if pattern is not None and pattern.search(key):
            continue
        b = before.get(key)
        if b is None or b.shape != a.shape:
            skipped += 1
            continue
        b64, a64 = b.detach().double().cpu(), a.detach().double().cpu()
        acc = sums.setdefault(key.rsplit(".", 1)[0], [0.0, 0.0])
        acc[0] += float((a64 - b64).pow(2).sum())
        acc[1] += float(b64.pow(2).sum())
    if not sums:
        raise ValueError(
            f"layer_drift: no parameter names in common (before has e.g. {list(before)[:3]}, after has "
            f"{list(after)[:3]}). Fix: compare checkpoints of the same network, or align names with align_state_dict."
        )
    if skipped:
        logger.info("layer_drift: %d tensors missing or reshaped on one side were skipped.", skipped)
    rows = []
    for layer, (d2, w2) in sums.items():
        rel = math.sqrt(d2) / math.sqrt(w2) if w2 > 0 else (math.inf if d2 > 0 else 0.0)
        rows.append(LayerDrift(layer, rel))
    return rows


def write_drift_csv(rows: Sequence[LayerDrift], path: _PathLike) -> Path:
    """Write ``order,layer,rel_change`` rows (input -> output) as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["order", "layer", "rel_change"])
    for i, row in enumerate(rows):
        writer.writerow([i, row.layer, f"{row.rel_change:.6g}"])
    return write_text(Path(path), buf.getvalue())


def plot_drift(rows: Sequence[LayerDrift], path: _PathLike, title: str = "Layer drift") -> Path:
    """Bar chart of relative change per layer (input -> output) as PNG (matplotlib Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = [r.rel_change if math.isfinite(r.rel_change) else float("nan") for r in rows]
    fig = Figure(figsize=(min(max(6.0, 0.18 * len(rows)), 40.0), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), values, color="tab:blue")
    ax.set_xticks(range(len(rows)), [r.layer for r in rows], rotation=90, fontsize=5 if len(rows) > 40 else 7)
    ax.set_ylabel("||W_after - W_before|| / ||W_before||")
    ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path

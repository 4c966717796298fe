"""The values a received bundle may set: a JSON Schema of the bundles' parameters, checked with ``jsonschema``.

The template check (:mod:`pipeline.share.templates`) lets a sender replace a template's literal with another plain
literal: a *parameter*. This module says which values each parameter may take (``lr`` in ``(0, 1]``, ``backbone`` one
of :data:`pipeline.networks.unet.BACKBONES`, ``class_names`` short printable unique names, ...). An id without a rule
of its own gets the generic rule: the template's kind, finite numbers, printable strings of at most 1024 characters,
nesting at most 8 levels deep, lists of at most 4096 items. A parameter set through a nested id
(``"intensity#mode"``) is checked with the rule found by walking the schema (``properties``, ``items``), and the
whole value it changes is checked again once merged into the template's value.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["GENERIC_RULE", "MAX_PARAM_DEPTH", "has_rule", "parameter_schema", "param_problem", "merged_problems"]

MAX_PARAM_DEPTH = 8
_SEP = "::"
#: printable: no C0/C1 control characters, no line/paragraph separators, no bidi overrides (terminal/log spoofing)
_PRINTABLE = "^[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]*$"
_TEXT = {"type": "string", "maxLength": 1024, "pattern": _PRINTABLE}
_NAME = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": _PRINTABLE}
_NUM = {"type": "number", "minimum": -1e6, "maximum": 1e6}
_BIG = 1e10
#: the generic rule of an id without its own: printable short strings, bounded numbers, lists and objects
GENERIC_RULE: dict[str, Any] = {
    "description": "a plain literal: finite numbers |x| <= 1e10, printable strings <= 1024 chars, lists <= 4096 items",
    "$defs": {
        "value": {
            "anyOf": [
                {"type": ["null", "boolean"]},
                {"type": "number", "minimum": -_BIG, "maximum": _BIG},
                _TEXT,
                {"type": "array", "maxItems": 4096, "items": {"$ref": "#/$defs/value"}},
                {
                    "type": "object",
                    "maxProperties": 4096,
                    "propertyNames": {"maxLength": 256, "pattern": _PRINTABLE},
                    "additionalProperties": {"$ref": "#/$defs/value"},
                },
            ]
        }
    },
    "$ref": "#/$defs/value",
}


def _int(lo: int, hi: int, what: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": lo, "maximum": hi, "description": f"{what}: an integer {lo}..{hi}"}


def _num(lo: float, hi: float, what: str) -> dict[str, Any]:
    return {"type": "number", "minimum": lo, "maximum": hi, "description": f"{what}: a number {lo:g}..{hi:g}"}


def _enum(values: Any, what: str) -> dict[str, Any]:
    return {"enum": list(values), "description": f"{what}: one of {list(values)}"}


def _shape(what: str) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 2,
        "maxItems": 3,
        "items": {"type": "integer", "minimum": 1, "maximum": 1024},
        "description": f"{what}: 2 or 3 integers 1..1024",
    }


def _weights(what: str) -> dict[str, Any]:
    return {
        "anyOf": [{"type": "null"}, {"type": "array", "minItems": 1, "maxItems": 255, "items": _num(0, 1e6, "")}],
        "description": f"{what}: null or a list of up to 255 finite numbers >= 0",
    }


def _receiver_only(what: str) -> dict[str, Any]:
    return {"const": False, "description": f"{what}: false (only the receiving site may set it, on its command line)"}


def _pipeline_names(module: str, name: str) -> tuple[str, ...]:
    # by name at run time, as the templates' own _target_s are: pipeline.networks (weights) and pipeline.inference
    # (from_bundle) use pipeline.share, so a static import here would point back up the user's story
    return tuple(getattr(importlib.import_module(module), name))


@lru_cache(maxsize=1)
def parameter_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the bundles' parameters: ``properties`` maps each top-level id to its rule;
    every rule has a ``description`` that refusals quote. Built once, at run time (enums from the toolkit)."""
    from pipeline.checks.report import LEVELS as levels
    from pipeline.transforms.intensity import INTENSITY_MODES as modes
    from pipeline.transforms.sampling import SAMPLING_MODES as sampling

    backbones = _pipeline_names("pipeline.networks.unet", "BACKBONES")
    formats = _pipeline_names("pipeline.inference.writers", "MASK_FORMATS")
    number_or_list = {"anyOf": [_NUM, {"type": "array", "minItems": 1, "maxItems": 64, "items": _NUM}]}
    options = {
        "type": "object",
        "properties": {
            "verify": {"const": True, "description": "verify: true (only the receiving site may turn it off)"},
            "trust_unverified": _receiver_only("trust_unverified"),
            "allow_unsigned": _receiver_only("allow_unsigned"),
            "trust": {"type": "array", "maxItems": 0, "description": "trust: empty (the receiver's decision)"},
            "sha256": {"type": "null", "description": "sha256: null (the receiver's decision)"},
            "trusted_keys": {"type": "null", "description": "trusted_keys: null (the receiver's decision)"},
            "strict": {"type": "boolean"},
            "adapt_channels": {"type": "boolean"},
            "exclude": {"anyOf": [_TEXT, {"type": "array", "maxItems": 64, "items": _TEXT}]},
            "class_mapping": {"type": "object", "maxProperties": 255, "additionalProperties": _NAME},
            "source_class_names": {"type": "array", "maxItems": 255, "items": _NAME},
            "target_class_names": {"type": "array", "maxItems": 255, "items": _NAME},
        },
        "additionalProperties": False,
        "description": "pretrained_options: exclude/strict/adapt_channels/class_mapping/class names only; "
        "verify, trust and keys are the receiver's",
    }
    stage = {
        "type": "object",
        "required": ["epoch", "trainable"],
        "properties": {
            "epoch": {"type": "integer", "minimum": 0, "maximum": 100000},
            "trainable": {"type": "array", "maxItems": 64, "items": _NAME},
            "lr_scale": {"type": "number", "minimum": 0, "maximum": 1e3},
        },
        "additionalProperties": False,
    }
    rules: dict[str, Any] = {
        "class_names": {
            "type": "array",
            "minItems": 1,
            "maxItems": 255,
            "uniqueItems": True,
            "items": _NAME,
            "description": "class_names: 1..255 unique printable names of 1..64 characters",
        },
        "spatial_dims": _enum((2, 3), "spatial_dims"),
        "in_channels": _int(1, 64, "in_channels"),
        "backbone": _enum(backbones, "backbone"),
        "decoder_channels": {
            "type": "array",
            "minItems": 5,
            "maxItems": 5,
            "items": {"type": "integer", "minimum": 1, "maximum": 2048},
            "description": "decoder_channels: 5 integers 1..2048",
        },
        "patch_size": _shape("patch_size"),
        "roi_size": _shape("roi_size"),
        "pixdim": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 3,
                    "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
                },
            ],
            "description": "pixdim: null or 2..3 spacings 0 < x <= 100",
        },
        "intensity": {
            "type": "object",
            "required": ["mode"],
            "properties": {"mode": _enum(modes, "intensity mode"), "nonzero": {"type": "boolean"}},
            "propertyNames": {"pattern": "^[a-z_]{1,32}$"},
            "additionalProperties": number_or_list,
            "description": f"intensity: an object with 'mode' in {list(modes)} and finite numeric settings",
        },
        "ratios": _weights("ratios"),
        "ce_weight": _weights("ce_weight"),
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "lr: a number 0 < x <= 1"},
        "weight_decay": _num(0, 1, "weight_decay"),
        "max_epochs": _int(1, 100000, "max_epochs"),
        "batch_size": _int(1, 1024, "batch_size"),
        "num_samples": _int(1, 1024, "num_samples"),
        "sw_batch_size": _int(1, 1024, "sw_batch_size"),
        "val_interval": _int(1, 100000, "val_interval"),
        "ckpt_every": _int(1, 100000, "ckpt_every"),
        "ckpt_keep_last": _int(0, 1000, "ckpt_keep_last"),
        "warmup_iterations": _int(0, 10**7, "warmup_iterations"),
        "seed": _int(0, 2**32 - 1, "seed"),
        "sw_overlap": {
            "type": "number",
            "minimum": 0,
            "exclusiveMaximum": 1,
            "description": "sw_overlap: a number 0 <= x < 1",
        },
        "sw_mode": _enum(("gaussian", "constant"), "sw_mode"),
        "cache_rate": _num(0, 1, "cache_rate"),
        "val_fraction": _num(0, 1, "val_fraction"),
        "pos": _num(0, 1e3, "pos"),
        "neg": _num(0, 1e3, "neg"),
        "lambda_dice": _num(0, 1e3, "lambda_dice"),
        "lambda_ce": _num(0, 1e3, "lambda_ce"),
        "color_tolerance": _num(0, 255, "color_tolerance"),
        "sampling": _enum(sampling, "sampling"),
        "check_data": _enum(levels, "check_data"),
        "mask_format": _enum(formats, "mask_format"),
        "channel_dim": {
            "anyOf": [{"const": "auto"}, {"enum": [0, -1]}],
            "description": "channel_dim: 'auto', 0 or -1",
        },
        "key_metric_class": {**_NAME, "description": "key_metric_class: 'mean' or a class name"},
        "eval_split": {**_NAME, "description": "eval_split: a datalist section name"},
        "label_colors": {
            "anyOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "maxProperties": 255,
                    "propertyNames": {"maxLength": 64, "pattern": _PRINTABLE},
                    "additionalProperties": {
                        "type": "array",
                        "minItems": 3,
                        "maxItems": 3,
                        "items": {"type": "integer", "minimum": 0, "maximum": 255},
                    },
                },
            ],
            "description": "label_colors: null or {class: [r, g, b]} with 0..255 integers",
        },
        "unfreeze_stages": {
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "items": stage,
            "description": "unfreeze_stages: up to 64 {epoch, trainable: [stage names], lr_scale}",
        },
        "pretrained": {
            "enum": [None, "imagenet"],
            "description": "pretrained: null or 'imagenet' (a path is the receiver's choice, never the sender's)",
        },
        "pretrained_options": options,
        "trusted_keys": {"type": "null", "description": "trusted_keys: null (the receiver's keys, never the sender's)"},
        "trust_unverified": _receiver_only("trust_unverified"),
        "bundle_root": {"const": ".", "description": "bundle_root: '.' (set by whoever runs the bundle)"},
    }
    for flag in ("resume", "amp", "probabilities", "dicom_seg", "overwrite", "progress"):
        rules.setdefault(flag, {"type": "boolean", "description": f"{flag}: true or false"})
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": rules}


def _describe(rule: Mapping[str, Any], cid: str) -> str:
    return str(rule.get("description") or f"{cid.replace(_SEP, '#')}: {json.dumps(rule, sort_keys=True)[:160]}")


def _rule_for(cid: str) -> tuple[dict[str, Any], str] | None:
    """The schema rule for id ``cid`` (``::``-separated), walking ``properties``/``items``/``anyOf``; None if the id
    has no rule of its own (the generic rule applies)."""
    parts = cid.split(_SEP)
    rule = parameter_schema()["properties"].get(parts[0])
    if rule is None:
        return None
    desc = _describe(rule, parts[0])
    for part in parts[1:]:
        branches = [rule, *rule.get("anyOf", ())]
        nxt = None
        for b in branches:
            if part in b.get("properties", {}):
                nxt = b["properties"][part]
            elif isinstance(b.get("items"), dict) and part.lstrip("-").isdigit():
                nxt = b["items"]
            elif isinstance(b.get("additionalProperties"), dict):
                nxt = b["additionalProperties"]
            if nxt is not None:
                break
        if nxt is None:
            return {"not": {}}, f"{desc} (no sub-id {part!r})"
        rule = nxt
    return rule, desc


def has_rule(cid: str) -> bool:
    """Whether id ``cid`` (``::``-separated) has a rule of its own (then it, not the template's kind, decides)."""
    return cid.split(_SEP)[0] in parameter_schema()["properties"]


def _depth(value: Any, depth: int = 0) -> int:
    if depth > MAX_PARAM_DEPTH:
        return depth
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(v, depth + 1) for v in items), default=depth)


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return any(_non_finite(v) for v in items)


def _error(value: Any, rule: Mapping[str, Any]) -> str | None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(rule)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    if error.validator == "pattern":
        bound = "(printable characters only)"
    elif error.validator in ("enum", "anyOf", "oneOf", "$ref"):
        bound = ""
    else:
        bound = json.dumps(error.validator_value, default=str)
        bound = bound if len(bound) <= 60 else bound[:57] + "..."
    return f"{where or 'value'} fails '{error.validator}' {bound}".rstrip()


def param_problem(cid: str, value: Any) -> str | None:
    """Why the sender's ``value`` at id ``cid`` (``::``-separated) is not allowed, else None.

    The reason quotes the rule (the schema's ``description``); the value itself is not in it (the caller prints it
    escaped).
    """
    if _depth(value) > MAX_PARAM_DEPTH:
        return f"nested deeper than {MAX_PARAM_DEPTH} levels (rule: parameters are shallow literals)"
    if _non_finite(value):
        return "non-finite number (rule: numbers must be finite)"
    found = _rule_for(cid)
    rule, desc = found if found is not None else (GENERIC_RULE, str(GENERIC_RULE["description"]))
    why = _error(value, rule)
    if why is None and found is not None:
        why = _error(value, GENERIC_RULE)  # a rule of its own never loosens the generic bounds
    # ASCII only, control characters escaped (\x1b, \u001b): a received value never reaches a terminal raw
    shown = f"'{value.encode('unicode_escape').decode('ascii')}'" if isinstance(value, str) else json.dumps(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return None if why is None else f"{shown} breaks the rule ({desc}): {why}"


def merged_problems(template: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, str]:
    """``{top-level id: reason}`` for parameters set through nested ids (``"intensity#mode"``): each is merged into
    the template's literal value at its top-level id and the whole value is checked against that id's rule."""
    nested: dict[str, list[tuple[list[str], Any]]] = {}
    for cid, value in params.items():
        top, *rest = cid.split(_SEP)
        if rest and top in parameter_schema()["properties"]:
            nested.setdefault(top, []).append((rest, value))
    out: dict[str, str] = {}
    for top, changes in nested.items():
        base = params.get(top, template.get(top))
        merged = copy.deepcopy(base)
        try:
            for path, value in sorted(changes, key=lambda c: len(c[0])):
                node = merged
                for p in path[:-1]:
                    node = node[int(p)] if isinstance(node, list) else node[p]
                if isinstance(node, list):
                    node[int(path[-1])] = value
                else:
                    node[path[-1]] = value
        except (KeyError, IndexError, ValueError, TypeError):
            out[top] = "a nested id does not exist in the template's value"
            continue
        if why := param_problem(top, merged):
            out[top] = f"once merged: {why}"
    return out

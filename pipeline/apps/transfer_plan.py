"""Plan fine-tuning from another site's bundle: :func:`transfer_plan` adds ``pretrained``, the class mapping by
name and ``unfreeze_stages`` sized to the cases to a dataset's plan (``plan --from SOURCE_BUNDLE``, for
``finetune.json``).

A received bundle is another site's code and data: a zip is verified (signature, then the sha256 pinned for
training), its ``train.json`` values are read as JSON literals and never evaluated, and its weights are dry-run
loaded into the planned network so a misfit is refused before any training.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.apps.fingerprint import Plan, PlanError
from pipeline.bundle.config import get_parsed, open_bundle

__all__ = ["FEW_CASES", "MANY_CASES", "transfer_plan"]

logger = logging.getLogger(__name__)

FEW_CASES, MANY_CASES = 20, 100  # fine-tuning: below FEW the encoder mostly stays frozen, from MANY it all adapts


def _class_mapping(names: Sequence[str], source: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """``{target: source}`` for names equal up to case; a near miss (difflib) is suggested, never applied."""
    by_fold = {s.casefold(): s for s in source}
    mapping, lines = {}, []
    for name in names:
        if name.casefold() in by_fold:
            mapping[name] = by_fold[name.casefold()]
            continue
        near = difflib.get_close_matches(name.casefold(), list(by_fold), n=1, cutoff=0.6)
        hint = (
            f'; did you mean {by_fold[near[0]]!r}? If it is the same structure, add "{name}": "{by_fold[near[0]]}" '
            "to pretrained_options.class_mapping"
            if near
            else ""
        )
        lines.append(
            f"{name!r}: no source class of that name (source: {list(source)}); its head channel starts fresh{hint}."
        )
    lines.insert(
        0, f"class_mapping {mapping} (same names, case-insensitive): those head channels keep the source's weights."
    )
    return mapping, lines


def _unfreeze_stages(n_train: int, epochs: int, deepest: str) -> tuple[list[dict[str, Any]], list[str]]:
    def at(fraction: float, after: int) -> int:
        return max(after + 1, round(epochs * fraction))

    stages: list[dict[str, Any]] = [{"epoch": 0, "trainable": ["decoder", "head"], "lr_scale": 1.0}]
    if n_train < FEW_CASES:
        stages.append({"epoch": at(0.5, 0), "trainable": [deepest], "lr_scale": 0.1})
        why = (
            f"{n_train} training cases (< {FEW_CASES}): too few to retrain the whole encoder without "
            f"overfitting; decoder and head first, {deepest} at half-time, the rest of the encoder stays frozen."
        )
    elif n_train < MANY_CASES:
        first = at(0.2, 0)
        stages += [
            {"epoch": first, "trainable": [deepest], "lr_scale": 0.1},
            {"epoch": at(0.5, first), "trainable": ["encoder"], "lr_scale": 0.01},
        ]
        why = (
            f"{n_train} training cases ({FEW_CASES}-{MANY_CASES - 1}): decoder and head first, {deepest} after "
            "20% of the epochs, the whole encoder (lr x0.01) at half-time."
        )
    else:
        stages.append({"epoch": at(0.1, 0), "trainable": ["encoder"], "lr_scale": 0.1})
        why = (
            f"{n_train} training cases (>= {MANY_CASES}): enough to adapt the whole encoder (lr x0.1) after a "
            "short head/decoder warm-up (10% of the epochs)."
        )
    return stages, [why]


def _source_literal(folder: Path, key: str, default: Any) -> Any:
    """A top-level value of the source bundle's ``configs/train.json``, read as JSON and never evaluated: another
    site's configs may hold code (``$`` expressions, ``@`` references), which planning must not run."""
    path = Path(folder) / "configs" / "train.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PlanError(f"--from {folder}: cannot read {path} as JSON ({e}).") from e
    value = config.get(key, default)
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        raise PlanError(
            f"--from {folder}: {path} {key!r} is {value!r}, an expression or reference; planning reads a received "
            f"bundle's values as literals only, never evaluates them. Fix: the sender sets {key!r} to a plain value."
        )
    return value


def transfer_plan(
    plan: Plan,
    source: str | Path,
    trust: Sequence[str] = (),
    trusted_keys: str | Path | None = None,
    allow_unsigned: bool = False,
    trust_unverified: bool = False,
) -> Plan:
    """Add fine-tuning from the bundle ``source`` (folder or zip) to ``plan`` for ``finetune.json``.

    The fine-tuned network takes the source's architecture: its ``backbone`` and ``decoder_channels`` (read from its
    ``train.json`` as literals) replace the local bundle's when they differ. Refuses, before any training, a source of
    the other dimensionality (2D vs 3D), an encoder this toolkit does not have, and weights that do not fit the
    source's declared network: the planned network is built and the weights are loaded into it once
    (:func:`pipeline.networks.weights.load_pretrained`). A zip is verified first (signed by one of ``trusted_keys``,
    default ``$PIPELINE_TRUSTED_KEYS``, unless ``allow_unsigned``); the plan then pins its sha256 and passes the same
    keys to training (``trusted_keys``). A folder needs the proof training will ask for
    (:func:`pipeline.share.trust.check_bundle_folder`): a received folder is re-verified; your own training output
    (no ``manifest.json``) needs ``trust_unverified``, which the plan then passes on to training.

    Raises:
        PlanError: the source is missing, unverified, of the other dimensionality, or its weights do not fit.
    """
    from pipeline.networks.sources import read_class_names
    from pipeline.networks.unet import BACKBONES, PretrainedUNet
    from pipeline.networks.weights import ArchitectureMismatchError, load_pretrained
    from pipeline.share.install import open_verified_bundle
    from pipeline.share.trust import check_bundle_folder

    fp, values, src = plan.fingerprint, dict(plan.values), Path(source)
    if not src.exists():
        raise PlanError(f"--from {src}: not found; expected a bundle folder or zip (python -m pipeline pack).")
    try:
        keys = str(trusted_keys) if trusted_keys is not None else None
        folder = (
            open_verified_bundle(src, trust=trust, trusted_keys=keys, allow_unsigned=allow_unsigned)
            if src.is_file()
            else src
        )
        if src.is_dir():
            check_bundle_folder(
                src, "load", trust_unverified=trust_unverified, trust=trust, trusted_keys=keys,
                allow_unsigned=allow_unsigned,
            )  # fmt: skip
    except Exception as e:  # verification failures of another site's bundle, named by the verifier
        what = "zip" if src.is_file() else "folder (plan: --trust-unverified if it is your own training output)"
        raise PlanError(f"--from {src}: the bundle {what} failed verification: {e}") from e
    src_dims = int(_source_literal(folder, "spatial_dims", 3))
    if src_dims != fp.spatial_dims:
        raise PlanError(
            f"--from {src}: a {src_dims}D bundle cannot initialise a {fp.spatial_dims}D network ({fp.dataset_dir} "
            f"holds {fp.spatial_dims}D images); its kernels have another shape. Fix: start from a "
            f"{fp.spatial_dims}D bundle, or train from scratch (plan without --from)."
        )
    target = open_bundle(plan.bundle, ["train.json", "finetune.json"])
    local_backbone, local_decoder = get_parsed(target, "backbone"), list(get_parsed(target, "decoder_channels"))
    backbone = _source_literal(folder, "backbone", local_backbone)
    decoder = _source_literal(folder, "decoder_channels", local_decoder)
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise PlanError(
            f"--from {src}: its encoder {backbone!r} (configs/train.json backbone) is not one this toolkit builds "
            f"({list(BACKBONES)}), so its weights cannot be loaded. Fix: ask the sender for a bundle with one of "
            "these encoders, or train from scratch (plan without --from)."
        )
    if not isinstance(decoder, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in decoder):
        raise PlanError(
            f"--from {src}: configs/train.json decoder_channels must be a list of integers, got {decoder!r}."
        )
    arch_lines = []
    if (backbone, decoder) != (local_backbone, local_decoder):
        values["backbone"], values["decoder_channels"] = backbone, decoder
        arch_lines.append(
            f"the source was trained as a {backbone} U-Net with decoder_channels {decoder} (its configs/train.json); "
            f"fine-tuning keeps its architecture instead of this bundle's {local_backbone} {local_decoder}."
        )
    src_names = read_class_names(folder) or [str(n) for n in _source_literal(folder, "class_names", [])]
    mapping, class_lines = _class_mapping(values["class_names"], src_names)
    network = PretrainedUNet(
        fp.spatial_dims, values["in_channels"], values["out_channels"], backbone, decoder_channels=decoder
    )
    try:
        report = load_pretrained(
            network,
            folder,
            class_mapping=mapping or None,
            source_class_names=src_names,
            target_class_names=values["class_names"],
            verify=False,  # verified above (zip) or checked by check_bundle_folder (folder)
        )
    except (ArchitectureMismatchError, FileNotFoundError, ValueError) as e:
        raise PlanError(f"--from {src}: its weights do not fit the planned {backbone} network: {e}") from e
    src_in = int(_source_literal(folder, "in_channels", 1))
    options: dict[str, Any] = {
        "target_class_names": "@class_names",
        "report_path": "$@output_dir + '/pretrained_load_report.json'",
        "class_mapping": mapping,
        "trusted_keys": "@trusted_keys",
    }
    if trust_unverified and src.is_dir():
        options["trust_unverified"] = True
        class_lines.append("--trust-unverified: the folder is used without proof (your own training output).")
    if allow_unsigned:
        options["allow_unsigned"] = True
        class_lines.append("--allow-unsigned: NOTHING proves who made this bundle; training accepts it unsigned too.")
    if trusted_keys is not None:
        values["trusted_keys"] = str(Path(trusted_keys).resolve())
    if src.is_file():
        options["sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
        class_lines.append("sha256 of the zip pinned: training loads only these verified bytes.")
    if src_in != values["in_channels"]:
        class_lines.append(
            f"the source has in_channels={src_in}, the data {values['in_channels']}: the stem kernel is adapted "
            "(pipeline.networks.weights.adapt_input_channels); the rest of the encoder loads unchanged."
        )
    class_lines.append(f"dry-run load into the planned network: {len(report.loaded)} tensors load.")
    values["pretrained"] = str(src.resolve())
    values["pretrained_options"] = options
    deepest = network.encoder_stage_names[-1]
    values["unfreeze_stages"], unfreeze_lines = _unfreeze_stages(fp.n_train, values["max_epochs"], deepest)
    reasons = {**plan.reasons, "pretrained": class_lines, "unfreeze_stages": unfreeze_lines}
    if arch_lines:
        reasons["backbone"] = arch_lines
    unknown = [k for k in values if k not in target]
    if unknown:
        raise PlanError(f"{plan.bundle}/configs/finetune.json defines no {unknown}; cannot plan fine-tuning.")
    return Plan(values, reasons, plan.bundle, fp)

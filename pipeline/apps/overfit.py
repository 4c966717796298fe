"""Overfit sanity check: can the bundle's real setup memorise a handful of training cases?

:func:`overfit` builds the network, training transforms (augmentation off), loss and optimiser from the bundle's
``train.json`` through ``monai.bundle.ConfigParser`` (with overrides), trains on the first ``cases`` training cases
only, and every ``eval_every`` steps measures **train Dice with sliding-window inference on those whole cases**
(the bundle's ``validate#preprocessing`` and ``validate#inferer``): per class, Dice pooled over the voxels of the
training cases (``2 TP / (2 TP + FP + FN)``); the score is the mean over foreground classes present in them.
Whole cases rather than patches, because patches are centred on the classes by the sampler and would flatter
the model; a pass means the labels, transforms and architecture can represent every class in whole images.

It stops at ``target`` (PASS) or after ``max_steps`` (FAIL). A FAIL on clean data points at labels misaligned
with images, wrong label values, a transform that breaks the pairing, a too-low ``lr``, or a patch/pixdim that
cannot hold the structures. ``benchmarks.harness`` reuses :func:`train_steps` and
:func:`predict`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism

from pipeline.bundle.config import open_bundle
from pipeline.data.datalist import case_id

__all__ = ["OverfitResult", "overfit", "pooled_dice", "predict", "train_steps"]

logger = logging.getLogger(__name__)


@dataclass
class OverfitResult:
    """Outcome of :func:`overfit`.

    Attributes:
        passed: ``mean_dice >= target``.
        mean_dice: mean train Dice over the foreground classes present in the training cases (last evaluation).
        per_class: class name -> train Dice; None for classes absent from the training cases.
        history: ``(step, mean training loss since the previous evaluation, mean Dice)`` per evaluation.
    """

    passed: bool
    target: float
    steps: int
    max_steps: int
    mean_dice: float
    per_class: dict[str, float | None]
    cases: list[str]
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable verdict, one line per class."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"{verdict}: train Dice {self.mean_dice:.3f} (target {self.target:g}) after {self.steps}/{self.max_steps} "
            f"steps, {self.seconds:.0f} s, on {len(self.cases)} cases: {', '.join(self.cases)}"
        ]
        for name, d in self.per_class.items():
            lines.append(f"  {name:<16} {'absent from these cases' if d is None else f'{d:.3f}'}")
        if not self.passed:
            lines.append(
                "  The setup cannot memorise these cases. Check labels against images (overlay, "
                "`python -m pipeline audit`), label values vs class_names, that transforms keep image and label "
                "aligned, the lr, and that pixdim/patch_size keep the smallest structures; or raise --max-steps."
            )
        return "\n".join(lines)


def train_steps(
    network: torch.nn.Module,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Mapping[str, Any]],
    steps: int,
    device: torch.device | str = "cpu",
    on_batch: Callable[[Mapping[str, Any]], None] | None = None,
) -> list[float]:
    """Run ``steps`` optimiser steps over ``loader`` (cycled); returns the loss of each step."""
    losses: list[float] = []
    while len(losses) < steps:
        for batch in loader:
            if on_batch is not None:
                on_batch(batch)
            network.train()
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(image), label)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) >= steps:
                break
    return losses


def predict(network: torch.nn.Module, inferer: Any, image: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """Label map ``(1, *spatial)`` of one preprocessed ``(C, *spatial)`` image."""
    network.eval()
    with torch.no_grad():
        logits = inferer(torch.as_tensor(image)[None].to(device), network)
    return logits.argmax(1).cpu()


def pooled_dice(
    network: torch.nn.Module, inferer: Any, items: Sequence[Mapping[str, Any]], num_classes: int, device: Any
) -> list[float | None]:
    """Per-class Dice pooled over every voxel of ``items`` (None where the reference has no voxel of a class)."""
    tp, fp, fn = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for item in items:
        pred = predict(network, inferer, item["image"], device).numpy().ravel()
        ref = np.asarray(item["label"]).ravel().astype(np.int64)
        both = np.bincount(ref[pred == ref], minlength=num_classes)[:num_classes]
        tp += both
        fp += np.bincount(pred, minlength=num_classes)[:num_classes] - both
        fn += np.bincount(ref, minlength=num_classes)[:num_classes] - both
    return [None if tp[c] + fn[c] == 0 else float(2 * tp[c] / (2 * tp[c] + fp[c] + fn[c])) for c in range(num_classes)]


def overfit(
    bundle: str | Path,
    dataset_dir: str | Path,
    cases: int = 3,
    max_steps: int = 300,
    target: float = 0.95,
    eval_every: int = 20,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> OverfitResult:
    """Train the bundle's setup on ``cases`` training cases until train Dice reaches ``target``.

    Args:
        bundle: bundle folder (``configs/train.json`` + ``configs/metadata.json``).
        dataset_dir: dataset folder; the first ``cases`` cases of the bundle's training split are used.
        cases: 1 to 5 cases.
        max_steps: optimiser steps before giving up.
        target: train Dice (mean over present foreground classes) to reach.
        eval_every: steps between evaluations.
        overrides: bundle config overrides (e.g. ``{"pixdim": [3, 3, 4], "patch_size": [32, 32, 32]}``);
            ``train#preprocessing#augment`` is forced to False.
        seed: ``set_determinism`` seed (weights, sampling).
    """
    if not 1 <= cases <= 5:
        raise ValueError(f"'cases' must be 1 to 5 (a sanity check on a handful of cases), got {cases}.")
    if max_steps < 1 or eval_every < 1 or not 0.0 < target <= 1.0:
        raise ValueError(
            f"need max_steps >= 1, eval_every >= 1, 0 < target <= 1; got {max_steps}, {eval_every}, {target}."
        )
    start = time.perf_counter()
    set_determinism(seed=seed)
    parser = open_bundle(bundle, "train.json", {**(overrides or {}), "train#preprocessing#augment": False}, dataset_dir)
    items = list(parser.get_parsed_content("train#datalist"))[:cases]
    parser["train#datalist"] = items
    parser["validate#datalist"] = items
    names = [str(n) for n in parser.get_parsed_content("class_names")]
    device = parser.get_parsed_content("device")
    network = parser.get_parsed_content("network")
    loss_function, optimizer = parser.get_parsed_content("loss"), parser.get_parsed_content("optimizer")
    loader = parser.get_parsed_content("train#dataloader")
    inferer = parser.get_parsed_content("validate#inferer")
    eval_items = list(parser.get_parsed_content("validate#dataset"))
    logger.info("overfit: %d cases, up to %d steps, target %.3f", len(items), max_steps, target)
    history: list[tuple[int, float, float]] = []
    step, mean = 0, 0.0
    per_class: list[float | None] = [None] * len(names)
    while step < max_steps:
        n = min(eval_every, max_steps - step)
        losses = train_steps(network, loss_function, optimizer, loader, n, device)
        step += n
        per_class = pooled_dice(network, inferer, eval_items, len(names), device)
        present = [d for d in per_class[1:] if d is not None]
        mean = float(np.mean(present)) if present else 0.0
        history.append((step, float(np.mean(losses)), mean))
        logger.info("overfit step %d: loss %.4f, train Dice %.3f", step, history[-1][1], mean)
        if mean >= target:
            break
    return OverfitResult(
        passed=mean >= target,
        target=target,
        steps=step,
        max_steps=max_steps,
        mean_dice=mean,
        per_class={names[c]: per_class[c] for c in range(1, len(names))},
        cases=[case_id(it["label"]) for it in items],
        seconds=time.perf_counter() - start,
        history=history,
    )

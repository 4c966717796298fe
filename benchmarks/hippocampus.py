"""MSD Hippocampus transfer on real anatomy: ``python -m benchmarks.hippocampus OUT --dataset D --weights W``.

Site A is the MSD Task04 training set with a user-written ``dataset.json`` (``docs/real-data.md`` § 1) and a model
trained there with ``plan`` (``--weights``: its ``models/model.pt``; ``--plan``: the ``plan.json`` it was trained
with). Site B is made from the cases site A held out for validation (``load_split(D, "validation", 0.2, 0)``: never
trained on) by a documented shift:

- intensity: ``x * 3.7 + 250`` (another scanner's scale and offset; float32);
- orientation: LPS instead of RAS (the voxel array flipped along its first two axes, the affine to match, with
  nibabel's ``as_reoriented``), labels alike — the world geometry is unchanged, so the toolkit's RAS reorientation
  has to undo it.

The first ``--b-train`` of those cases are site B's training set, the rest its test set. Then, with the toolkit's own
commands (logged under ``OUT/logs``): stage site A's bundle (its configs set to the plan's model values, the
weights copied in) → ``keygen`` + ``pack --sign`` → ``plan site_B --from`` the signed zip → fine-tune on site B's
cases; ``plan site_B`` → train from scratch, equal epochs → evaluate site A's model as is, the fine-tuned and the
scratch model on site B's test cases (per-class Dice/IoU/HD95). ``OUT/hippocampus_summary.json`` holds the results.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["SCALE", "OFFSET", "main", "make_site_b", "run_arms"]

SCALE, OFFSET = 3.7, 250.0


def _to_lps(img: nib.Nifti1Image) -> nib.Nifti1Image:
    ras_to_lps = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    return img.as_reoriented(ras_to_lps)


def make_site_b(dataset: Path, out: Path, b_train: int = 4) -> Path:
    """Write the shifted site B (see the module docstring) under ``out`` with its own ``dataset.json``."""
    from pipeline.data.datalist import load_split

    held_out = load_split(dataset, "validation", 0.2, 0)
    meta = json.loads((dataset / "dataset.json").read_text())
    entries = []
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for case in held_out:
        name = Path(case["image"]).name
        image, label = nib.load(case["image"]), nib.load(case["label"])
        data = np.asarray(image.dataobj, dtype=np.float32) * SCALE + OFFSET
        shifted = _to_lps(nib.Nifti1Image(data, image.affine))
        nib.save(shifted, out / "imagesTr" / name)
        nib.save(
            _to_lps(nib.Nifti1Image(np.asarray(label.dataobj, dtype=np.uint8), label.affine)), out / "labelsTr" / name
        )
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    site = {
        **{k: meta[k] for k in ("name", "modality", "labels") if k in meta},
        "description": f"site B: MSD Hippocampus cases site A held out, intensity x{SCALE} + {OFFSET}, LPS",
        "training": entries[:b_train],
        "test": entries[b_train:],
    }
    (out / "dataset.json").write_text(json.dumps(site, indent=2) + "\n")
    return out


def run_arms(out: Path, dataset: Path, weights: Path, plan_json: Path, *, epochs_b: int, b_train: int) -> dict:
    """Site B's three arms (see the module docstring); returns the summary."""
    from pipeline.bundle.config import BUNDLE_3D
    from pipeline.bundle.run import bundle_command, configure_bundle, run_bundle, shared_values, stage_bundle

    py, logs, times = sys.executable, out / "logs", {}

    def step(name: str, cmd: list[str]) -> None:
        times[name] = round(run_bundle(cmd, logs / f"{name}.log"), 1)
        print(f"{name}: {times[name]} s", flush=True)

    def stage(name: str, values: dict[str, Any]) -> Path:
        bundle = stage_bundle(BUNDLE_3D, out / name)
        configure_bundle(bundle, shared_values(bundle, values))
        return bundle

    def plan(name: str, *extra: str) -> dict[str, Any]:
        path = out / f"plan_{name}.json"
        cmd = [py, "-m", "pipeline", "plan", str(out / "site_B"), "--bundle", str(BUNDLE_3D), "--out", str(path),
               "--device", "cpu", "--max-epochs", str(epochs_b), *extra]  # fmt: skip
        step(f"plan_{name}", cmd)
        return json.loads(path.read_text())

    def evaluate(bundle: Path, label: str) -> dict[str, Any]:
        eval_dir = out / f"eval_{label}"
        cmd = bundle_command(bundle, "evaluating", ["train.json", "evaluate.json"],
                             {"dataset_dir": str(out / "site_B"), "eval_dir": str(eval_dir)})  # fmt: skip
        step(f"evaluate_{label}", cmd)
        return json.loads((eval_dir / "summary.json").read_text())

    site_b = make_site_b(dataset, out / "site_B", b_train)
    print(f"site_B: {site_b}", flush=True)
    source = stage("bundle_site_A", json.loads(plan_json.read_text()))
    shutil.copyfile(weights, source / "models" / "model.pt")
    key, zip_a = out / "keys" / "site_a", out / "site_A_hippocampus.zip"
    if not key.is_file():
        step("keygen", [py, "-m", "pipeline", "keygen", str(key), "--comment", "site A (MSD Hippocampus)"])
    step("pack_site_A", [py, "-m", "pipeline", "pack", str(source), "--bump", "minor", "--notes",
                         "MSD Hippocampus, planned", "--sign", str(key), "-o", str(zip_a), "--force"])  # fmt: skip
    plan_ft = plan("finetune", "--from", str(zip_a), "--trusted-keys", f"{key}.pub")
    plan_sc = plan("scratch")
    files = {"finetune": ["train.json", "finetune.json"], "scratch": ["train.json"]}
    bundles = {}
    for arm, values in (("finetune", plan_ft), ("scratch", plan_sc)):
        bundles[arm] = stage(f"bundle_site_B_{arm}", values)
        cmd = bundle_command(bundles[arm], "training", files[arm], {"dataset_dir": str(site_b), **values})
        step(f"train_{arm}", cmd)
    results = {
        "site A model as is": evaluate(source, "site_A_model_as_is"),
        "fine-tuned": evaluate(bundles["finetune"], "finetuned"),
        "scratch": evaluate(bundles["scratch"], "scratch"),
    }
    summary = {"epochs_b": epochs_b, "b_train": b_train, "shift": {"scale": SCALE, "offset": OFFSET, "axcodes": "LPS"},
               "seconds": times, "results": results}  # fmt: skip
    (out / "hippocampus_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hippocampus", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--dataset", type=Path, required=True, help="MSD Hippocampus folder with dataset.json")
    parser.add_argument("--weights", type=Path, required=True, help="site A's trained models/model.pt")
    parser.add_argument("--plan", type=Path, required=True, help="the plan.json site A trained with")
    parser.add_argument("--epochs-b", type=int, default=30)
    parser.add_argument("--b-train", type=int, default=4)
    args = parser.parse_args(argv)
    summary = run_arms(args.out, args.dataset, args.weights, args.plan, epochs_b=args.epochs_b, b_train=args.b_train)
    for label, result in summary["results"].items():
        dice = {n: round(c["metrics"]["dice"]["mean"], 3) for n, c in result["classes"].items()}
        print(f"{label}: Dice {dice}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

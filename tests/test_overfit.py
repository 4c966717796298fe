from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipeline.apps.overfit import overfit, pooled_dice
from pipeline.bundle.config import BundleError, open_bundle
from pipeline.cli import main
from tests.conftest import BUNDLE_3D

# volumes of 48x48x24 voxels at 3x3x4 mm, so pixdim [3, 3, 4] needs no resampling. Two classes: from scratch, the
# bundle's network needs ~40 steps for a large structure but 150+ for small ones, too slow for a unit test.
TINY = {
    "pixdim": [3.0, 3.0, 4.0],
    "patch_size": [32, 32, 32],
    "num_samples": 2,
    "batch_size": 1,
    "lr": 0.001,
    "class_names": ["background", "organ"],
    "ratios": [1, 1],
}
INTENSITY = {0: 0.0, 1: 100.0, 2: 200.0, 3: 50.0}


def _phantom(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Clean, high-contrast phantom: an organ ball (the label) next to a bright tube and a dark spot (background)."""
    x, y, z = np.meshgrid(*[np.arange(s, dtype=float) for s in (48, 48, 24)], indexing="ij")
    c = np.array([18.0, 26.0, 12.0]) + rng.uniform(-2, 2, 3)
    label = np.zeros((48, 48, 24), np.uint8)
    label[((x - c[0]) ** 2 + (y - c[1]) ** 2 + ((z - c[2]) * 1.3) ** 2) <= 100] = 1
    label[((x - 37) ** 2 + (y - 20 - rng.uniform(-3, 3)) ** 2) <= 25] = 2
    label[((x - 38) ** 2 + (y - 36) ** 2 + (z - c[2]) ** 2) <= 9] = 3
    image = np.vectorize(INTENSITY.get)(label).astype(np.float32) + rng.normal(0, 5, label.shape).astype(np.float32)
    return image, (label == 1).astype(np.uint8)


def _dataset(root: Path, shuffle: bool = False) -> Path:
    """Two training cases + one validation case (so the bundle's split keeps both training cases)."""
    rng = np.random.default_rng(0)
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    entries = []
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(3):
        image, label = _phantom(rng)
        if shuffle:  # voxels shuffled: the class frequencies stay, the labels no longer match the image
            label = rng.permutation(label.ravel()).reshape(label.shape)
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"c{i}.nii.gz"))
        entries.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    return root


@pytest.fixture
def one_thread():
    """One torch thread: much faster than two when the 2-core machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_overfit_passes_on_clean_labels(tmp_path, one_thread):
    result = overfit(
        BUNDLE_3D, _dataset(tmp_path / "clean"), cases=2, max_steps=80, target=0.9, eval_every=20, overrides=TINY
    )
    print(result.summary(), result.history)
    assert result.passed, result.summary()
    assert result.cases == ["c0", "c1"] and set(result.per_class) == {"organ"}
    assert "PASS" in result.summary()


@pytest.mark.slow
def test_overfit_command_fails_clearly_on_shuffled_labels(tmp_path, one_thread, capsys):
    args = ["overfit", "--bundle", str(BUNDLE_3D), "--dataset_dir", str(_dataset(tmp_path / "shuffled", shuffle=True))]
    args += ["--cases", "2", "--max-steps", "40", "--target", "0.9", "--eval-every", "20"]
    args += [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAIL: train Dice 0.0" in out and "after 40/40 steps" in out and "Check labels against images" in out
    assert "  organ " in out


class _Echo(torch.nn.Module):
    """A 'network' whose prediction is its input: one-hot logits of the label map passed as the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(x[:, 0].long(), 4).movedim(-1, 1).float()


def test_pooled_dice_matches_hand_counts():
    refs, preds = [[0, 1, 1, 2], [0, 0, 1, 2]], [[0, 1, 2, 2], [1, 0, 1, 0]]  # two cases; class 3 absent
    items = [{"image": torch.tensor([p]), "label": torch.tensor([r])} for r, p in zip(refs, preds, strict=True)]
    dice = pooled_dice(_Echo(), lambda x, net: net(x), items, 4, "cpu")
    # class 1: tp 1+1, fp 0+1, fn 1+0 -> 4/6; class 2: tp 1+0, fp 1+0, fn 0+1 -> 2/4; class 3: absent -> None
    assert dice[1:] == [pytest.approx(4 / 6), pytest.approx(0.5), None]


def test_bundle_loss_uses_ce_weight():
    """`ce_weight` reaches DiceCELoss through the config; with lambda_dice=0 the loss is weighted cross-entropy."""
    weight = [0.2, 1.0, 2.0, 4.0]
    parser = open_bundle(BUNDLE_3D, overrides={"ce_weight": weight, "lambda_dice": 0.0, "lambda_ce": 1.0})
    loss = parser.get_parsed_content("loss")
    assert loss.cross_entropy.weight.tolist() == pytest.approx(weight)
    torch.manual_seed(0)
    logits, target = torch.randn(2, 4, 6, 6, 6), torch.randint(0, 4, (2, 1, 6, 6, 6))
    expected = torch.nn.functional.cross_entropy(logits, target[:, 0], weight=torch.tensor(weight))
    assert float(loss(logits, target)) == pytest.approx(float(expected), rel=1e-5)
    unweighted = open_bundle(BUNDLE_3D, overrides={"lambda_dice": 0.0}).get_parsed_content("loss")
    assert unweighted.cross_entropy.weight is None
    assert float(unweighted(logits, target)) != pytest.approx(float(expected), rel=1e-3)


def test_open_bundle_and_overfit_errors(tmp_path):
    with pytest.raises(BundleError, match=r"configs/train.json not found; expected a MONAI bundle folder"):
        open_bundle(tmp_path)
    with pytest.raises(ValueError, match="'cases' must be 1 to 5"):
        overfit(BUNDLE_3D, tmp_path, cases=9)

"""Any legal patch shape trains, and a failure in the data path names the case file.

A user on MSD Hippocampus with ``--patch_size "[32,64,32]"`` saw training die in a collate error deep inside MONAI
("stack expects each tensor to be equal size") with no case name: the 90° rotation ran in a plane whose two patch
sides differ. Rotations now only run in square planes, and every chain error is a ``CaseTransformError`` that starts
with the file.
"""

from __future__ import annotations

import pytest
import torch
from monai.utils import set_determinism

from pipeline.bundle.config import BUNDLE_3D, open_bundle
from pipeline.data.datalist import load_split
from pipeline.transforms.chains import CaseTransformError, train_transforms

TINY = {"pixdim": [3.0, 3.0, 4.0], "num_samples": 2, "batch_size": 2, "cache_rate": 0.0, "max_epochs": 1}


@pytest.mark.slow
def test_a_non_cubic_patch_trains_through_the_bundle(tiny_dataset_3d, tmp_path):
    set_determinism(0)
    overrides = {**TINY, "patch_size": [32, 64, 32], "val_interval": 5, "bundle_root": str(tmp_path)}
    parser = open_bundle(BUNDLE_3D, "train.json", overrides, tiny_dataset_3d)
    parser["bundle_root"] = str(tmp_path)
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()  # 3 cases x 2 patches, batches of 2: collates only if every patch kept its shape
    assert trainer.state.iteration == trainer.state.epoch_length > 0
    assert torch.isfinite(torch.tensor(trainer.state.output[0]["loss"]))
    set_determinism(None)


def test_a_broken_case_is_named_in_the_error(tiny_dataset_3d, tmp_path):
    item = dict(load_split(tiny_dataset_3d, "training")[0])
    broken = tmp_path / "broken_case.nii.gz"
    broken.write_bytes(b"not a NIfTI file at all")
    chain = train_transforms(3, (32, 32, 32), 4, pixdim=(3.0, 3.0, 4.0), num_samples=1)
    with pytest.raises(CaseTransformError, match=r"^/.*broken_case\.nii\.gz: ImageFileError: ") as info:
        chain({**item, "image": str(broken)})
    assert "applying transform" not in str(info.value)  # MONAI's wrapper is peeled off


def test_the_foreground_crop_keeps_tissue_darker_than_the_mean_after_a_zscore():
    import numpy as np
    from monai.data import MetaTensor

    from pipeline.transforms.chains import above_minimum

    # after a z-score, background is the most negative value and dark tissue is negative too
    image = MetaTensor(np.full((1, 20, 20, 20), -2.0, np.float32))
    image[:, 5:15, 5:15, 5:15] = -0.5  # darker than the mean, but tissue
    image[:, 9:11, 9:11, 9:11] = 3.0
    assert int(above_minimum(image).sum()) == 1000  # MONAI's default (x > 0) would keep 8 voxels

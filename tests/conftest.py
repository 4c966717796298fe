from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
BUNDLE_3D = REPO / "bundles" / "transfer_3d_segmentation"
SCHEMA = REPO / "pipeline" / "schemas" / "meta_schema_20240725.json"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dataset_3d(tmp_path_factory) -> Path:
    """Site A phantoms, 3 training + 1 validation + 1 test case (shared by tests; do not modify)."""
    from pipeline.data.synthetic import make_site

    root = tmp_path_factory.mktemp("tiny3d") / "site_A"
    return make_site(root, site="A", n_train=3, n_val=1, n_test=1, seed=0)

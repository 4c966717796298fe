"""``configs/multi_gpu_train.json`` and ``pipeline.utils.distributed``: the overlay passes ``pipeline verify``,
composes with
``train.json`` (and ``finetune.json``), builds a DDP trainer in a world of one, and under ``torchrun`` with two CPU
processes (gloo) the ranks end with identical weights while only rank 0 writes ``model.pt`` and TensorBoard files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

from pipeline.share.scan import collect_imports, scan_config
from pipeline.utils import distributed as pd
from tests.conftest import BUNDLE_3D

CONFIGS = BUNDLE_3D / "configs"
OVERLAY = CONFIGS / "multi_gpu_train.json"
TINY = {"patch_size": [32, 32, 32], "pixdim": [3.0, 3.0, 4.0], "num_samples": 2, "batch_size": 1, "sw_batch_size": 1}
PROGRESS = "pipeline.handlers.progress.ProgressBar"
LOGGING = {"StatsHandler", "TensorBoardStatsHandler", PROGRESS}
SAVING = {"pipeline.handlers.images.ValidationImageLogger", "pipeline.handlers.checkpoint.BestModelSaver"}


@pytest.fixture(scope="module")
def ddp_dataset(tmp_path_factory) -> Path:
    """3 training + 2 validation cases: the validation sampler (even_divisible=False) needs a case per rank."""
    from pipeline.data.synthetic import make_site

    return make_site(tmp_path_factory.mktemp("ddp") / "site_A", site="A", n_train=3, n_val=2, n_test=0, seed=0)


def _parser(*files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": str(BUNDLE_3D), **overrides})
    return parser


# ------------------------------------------------------------------------------------------------
# pipeline.utils.distributed
def test_rank_helpers_read_torchrun_environment(monkeypatch):
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (pd.local_rank(), pd.rank(), pd.world_size(), pd.is_rank0()) == (0, 0, 1, True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (pd.local_rank(), pd.rank(), pd.world_size(), pd.is_rank0()) == (1, 3, 4, False)
    assert pd.ddp_device(use_cuda=False) == torch.device("cpu")
    assert pd.default_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match=r"LOCAL_RANK must be an integer >= 0 \(set by torchrun\), got 'x'"):
        pd.local_rank()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(ValueError, match=r"LOCAL_RANK=0 but this node has 0 GPU\(s\)"):
            pd.ddp_device(use_cuda=True)


# ------------------------------------------------------------------------------------------------ the overlay
def test_overlay_passes_the_share_verifier():
    configs = {
        f: json.loads((CONFIGS / f).read_text()) for f in ("train.json", "finetune.json", "multi_gpu_train.json")
    }
    aliases: dict[str, str] = {}
    for data in configs.values():
        aliases.update(collect_imports(data))
    items = scan_config(configs["multi_gpu_train.json"], "configs/multi_gpu_train.json", aliases)
    assert items and [(i.item, i.reason) for i in items if i.reason] == []


@pytest.mark.parametrize("files", [("train.json",), ("train.json", "finetune.json")])
def test_overlay_changes_only_what_ddp_needs(files):
    parser = _parser(*files, "multi_gpu_train.json")
    assert parser["network#_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert parser["network#find_unused_parameters"] is True  # staged unfreezing: frozen stages give no gradients
    assert parser["train#dataloader#sampler"] == "@train#sampler" and parser["train#dataloader#shuffle"] is False
    assert parser["validate#sampler#even_divisible"] is False and parser["validate#dataloader#sampler"]
    # handlers are disabled by name on ranks > 0: logging and saving only on rank 0, every rank validates
    train, val = parser["train#handlers"], parser["validate#handlers"]
    assert {k for k, h in train.items() if "_disabled_" in h} == {"stats", "tensorboard", "progress"}
    assert {k for k, h in val.items() if "_disabled_" in h} == {"stats", "tensorboard", "images", "best_model"}
    assert "_disabled_" not in train["validation"]
    assert {h["_target_"] for h in train.values() if "_disabled_" in h} == LOGGING
    assert {h["_target_"] for h in val.values() if "_disabled_" in h} == (LOGGING - {PROGRESS}) | SAVING
    assert parser["tb_writer#_disabled_"] == "$dist.get_rank() > 0"
    if "finetune.json" in files:  # the overlay's tb_writer replaces finetune's with the same writer, rank 0 only
        tb = json.loads((CONFIGS / "finetune.json").read_text())["tb_writer"]
        assert {k: v for k, v in parser["tb_writer"].items() if k != "_disabled_"} == tb
        assert parser["optimizer#params"] == "$pipeline.networks.stages.param_groups(@network, @lr)"


def test_overlay_survives_a_handler_inserted_in_train_json(tmp_path):
    # a site adds a handler in front of the others: the overlay still disables exactly the logging/saving ones
    train = json.loads((CONFIGS / "train.json").read_text())
    early = {"_target_": "StatsHandler", "name": "inserted", "iteration_log": False}
    for section in ("train", "validate"):
        train[section]["handlers"] = {"inserted": early, **train[section]["handlers"]}
    (tmp_path / "train.json").write_text(json.dumps(train))
    parser = ConfigParser()
    parser.read_config([str(tmp_path / "train.json"), str(OVERLAY)])
    for section, disabled in (
        ("train", {"stats", "tensorboard", "progress"}),
        ("validate", {"stats", "tensorboard", "images", "best_model"}),
    ):
        handlers = parser[f"{section}#handlers"]
        assert list(handlers)[0] == "inserted" and "_disabled_" not in handlers["inserted"]
        assert {k for k, h in handlers.items() if "_disabled_" in h} == disabled


def test_overlay_builds_a_ddp_trainer_in_a_world_of_one(tiny_dataset_3d, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        parser = _parser(
            "train.json", "multi_gpu_train.json", dataset_dir=str(tiny_dataset_3d), output_dir=str(tmp_path / "runs"),
            ckpt_dir=str(tmp_path / "models"), **TINY,
        )  # fmt: skip
        assert pd.init_distributed(parser.get_parsed_content("dist_backend"), parser.get_parsed_content("device")) == 0
        trainer = parser.get_parsed_content("train#trainer")
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel)
        assert trainer.network.device_ids is None or torch.cuda.is_available()  # a CPU module gets no device_ids
        assert type(trainer.data_loader.sampler).__name__ == "DistributedSampler"
        names = {type(h).__name__ for h in parser.get_parsed_content("train#handlers").values()}
        assert names == {"ValidationHandler", "StatsHandler", "TensorBoardStatsHandler", "ProgressBar"}  # rank 0
        assert len(parser.get_parsed_content("validate#handlers")) == 4
    finally:
        pd.destroy_distributed()
    assert not dist.is_initialized()
    pd.destroy_distributed()  # idempotent


# ------------------------------------------------------------------------------------------------ torchrun, 2 ranks
def _torchrun(root: Path, configs: list[Path], dataset: Path, overrides: dict) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file", json.dumps([str(c) for c in configs]),
        "--meta_file", str(CONFIGS / "metadata.json"), "--bundle_root", str(root), "--dataset_dir", str(dataset),
    ]  # fmt: skip
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _rank_state_overlay(tmp_path: Path) -> Path:
    """Test-only overlay: each rank saves its parameters, trainable stages and pid before leaving the group."""
    run = json.loads((CONFIGS / "train.json").read_text())["run"]
    save = (
        "$torch.save({'pid': torch.multiprocessing.current_process().pid, "
        "'stages': @network.module.trainable_stages(), "
        "'params': {k: v.detach().cpu() for k, v in @network.module.named_parameters()}}, "
        f"'{tmp_path}/rank' + str(dist.get_rank()) + '.pt')"
    )
    path = tmp_path / "rank_state.json"
    path.write_text(json.dumps({"run": [*run, save]}))  # before finalize leaves the process group
    return path


@pytest.mark.slow
@pytest.mark.parametrize("finetune", [False, True], ids=["train", "train+finetune"])
def test_torchrun_two_cpu_ranks(ddp_dataset, tmp_path, finetune):
    root = tmp_path / "bundle"
    (root / "configs").mkdir(parents=True)
    files = [CONFIGS / "train.json", *([CONFIGS / "finetune.json"] if finetune else []), OVERLAY]
    overrides = {**TINY, "max_epochs": 2 if finetune else 1, "val_interval": 1}
    if finetune:  # pretrained weights from a fresh network; the encoder unfreezes after epoch 1
        from pipeline.networks.unet import PretrainedUNet

        torch.manual_seed(1)
        torch.save(PretrainedUNet(3, 1, 4, "resnet10", (64, 32, 16, 16, 8)).state_dict(), tmp_path / "pre.pt")
        stages = [{"epoch": 0, "trainable": ["decoder", "head"]}, {"epoch": 1, "trainable": ["encoder"]}]
        overrides.update(pretrained=str(tmp_path / "pre.pt"), unfreeze_stages=stages)
    _torchrun(root, [*files, _rank_state_overlay(tmp_path)], ddp_dataset, overrides)

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["pid"] != r1["pid"] and r0["params"].keys() == r1["params"].keys()
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), name
    models = root / "models"
    assert (models / "model.pt").is_file() and list(models.glob("checkpoint_epoch=*.pt"))
    events = list((root / "runs").glob("events.out.tfevents.*"))
    assert events and {e.name.split(".")[-2] for e in events} == {str(r0["pid"])}  # only rank 0 wrote TensorBoard
    if finetune:
        pre = torch.load(tmp_path / "pre.pt", weights_only=True)
        assert r0["stages"] == r1["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4", "decoder", "head"]
        assert not torch.equal(r0["params"]["encoder.conv1.weight"], pre["encoder.conv1.weight"])  # trained in epoch 2

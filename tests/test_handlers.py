from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism
from torch.nn.parallel import DistributedDataParallel as DDP

from pipeline.handlers.drift import DriftHandler
from pipeline.handlers.unfreeze import StagedUnfreezeHandler
from pipeline.networks.stages import freeze, param_groups
from pipeline.networks.unet import PretrainedUNet

torch.set_num_threads(1)
SMALL = (8, 8, 8, 8, 8)
LR = 1e-2
STAGES = [
    {"epoch": 0, "trainable": ["decoder", "head"]},
    {"epoch": 2, "trainable": ["layer4"], "lr_scale": 0.1},
    {"epoch": 3, "trainable": ["encoder"], "lr_scale": 0.01},
]


@pytest.fixture(autouse=True)
def _seed():
    set_determinism(0)
    yield
    set_determinism(None)


def make(dims=2):
    net = PretrainedUNet(dims, 1, 2, "resnet10", decoder_channels=SMALL)
    opt = torch.optim.AdamW(param_groups(net, LR), lr=LR)
    return net, opt


def recording_engine(net, opt):
    """Bare engine whose update records the trainable stages and LRs seen by each iteration."""
    seen = []

    def update(engine, batch):
        seen.append((engine.state.epoch, net.trainable_stages(), {g["name"]: g["lr"] for g in opt.param_groups}))

    return Engine(update), seen


def test_validation():
    net, opt = make()
    with pytest.raises(ValueError, match=r"Unknown stage 'layer5' for backbone 'resnet10'; valid: \['stem'"):
        StagedUnfreezeHandler(net, opt, [{"epoch": 0, "trainable": ["layer5"]}])
    with pytest.raises(
        ValueError, match=r"'stages\[1\]\.epoch' must be greater than the previous entry's \(0\), got 0"
    ):
        StagedUnfreezeHandler(net, opt, [{"epoch": 0, "trainable": "head"}, {"epoch": 0, "trainable": "decoder"}])
    with pytest.raises(ValueError, match=r"'stages\[0\]\.epoch' must be 0"):
        StagedUnfreezeHandler(net, opt, [{"epoch": 1, "trainable": "head"}])
    with pytest.raises(ValueError, match=r"'stages\[0\]\.lr_scale' must be a number > 0, got -1"):
        StagedUnfreezeHandler(net, opt, [{"epoch": 0, "trainable": "head", "lr_scale": -1}])
    with pytest.raises(ValueError, match=r"'stages\[0\]' must be a dict with keys 'epoch', 'trainable'"):
        StagedUnfreezeHandler(net, opt, [{"epoch": 0, "trainable": "head", "lr": 1}])
    plain = torch.optim.AdamW(net.parameters(), lr=LR)
    with pytest.raises(ValueError, match=r"no param group named 'stem'.*param_groups\(network, lr\)"):
        StagedUnfreezeHandler(net, plain, STAGES)


def test_schedule_applies_at_the_right_epochs():
    net, opt = make()
    writer_calls = []

    class Writer:
        def add_scalar(self, tag, value, step):
            writer_calls.append((tag, value, step))

    handler = StagedUnfreezeHandler(net, opt, STAGES, summary_writer=Writer())
    engine, seen = recording_engine(net, opt)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=4)
    per_epoch = {e: stages for e, stages, _ in seen}
    assert per_epoch[1] == per_epoch[2] == ["decoder", "head"]
    assert per_epoch[3] == ["layer4", "decoder", "head"]
    assert per_epoch[4] == list(net.stage_names)
    lrs = seen[-1][2]
    # layer4 keeps the scale of the entry that unfroze it; the rest of the encoder gets 0.01
    assert lrs == pytest.approx(
        {"stem": 1e-4, "layer1": 1e-4, "layer2": 1e-4, "layer3": 1e-4, "layer4": 1e-3, "decoder": LR, "head": LR}
    )
    assert seen[0][2]["layer4"] == 0.0  # frozen groups have lr 0
    assert engine.state.metrics["lr/stem"] == pytest.approx(1e-4) and engine.state.metrics["unfreeze/stage"] == 2
    assert ("lr/layer4", pytest.approx(1e-3), 3) in writer_calls and ("unfreeze/stage", 1.0, 3) in writer_calls
    assert handler.state_dict()["stage_index"] == 2


def test_warmup_ramps_newly_unfrozen_groups():
    net, opt = make()
    StagedUnfreezeHandler(net, opt, STAGES[:2], warmup_iterations=2).attach(engine := recording_engine(net, opt)[0])
    lrs = []
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: lrs.append((e.state.epoch, opt.param_groups[4]["lr"]))
    )
    engine.run([0, 1, 2], max_epochs=3)
    assert lrs[6:] == [(3, pytest.approx(5e-4)), (3, pytest.approx(1e-3)), (3, pytest.approx(1e-3))]
    assert lrs[0][1] == 0.0 and opt.param_groups[5]["lr"] == pytest.approx(LR)


def test_resume_restores_the_stage():
    net, opt = make()
    handler = StagedUnfreezeHandler(net, opt, STAGES)
    engine, seen = recording_engine(net, opt)
    handler.attach(engine)
    engine.load_state_dict({"epoch": 2, "epoch_length": 2, "max_epochs": 4})  # resumed after 2 completed epochs
    engine.run([0, 1])
    assert seen[0][:2] == (3, ["layer4", "decoder", "head"]) and seen[-1][1] == list(net.stage_names)

    net2, opt2 = make()
    restored = StagedUnfreezeHandler(net2, opt2, STAGES)
    opt2.load_state_dict(opt.state_dict())  # replaces the group dicts: the handler must follow
    restored.apply(0)
    assert opt2.param_groups[4]["lr"] == 0.0
    restored.load_state_dict({"stage_index": 1, "active": {"layer4": 0.1, "decoder": 1.0, "head": 1.0}})
    assert net2.trainable_stages() == ["layer4", "decoder", "head"]
    with pytest.raises(ValueError, match=r"'stage_index' must be in \[-1, 2\]"):
        restored.load_state_dict({"stage_index": 7})


def _bn_stats(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


def test_supervised_trainer_keeps_frozen_weights_and_bn_stats():
    net, opt = make(dims=3)
    stages = [{"epoch": 0, "trainable": ["decoder", "head"]}, {"epoch": 1, "trainable": ["layer4"], "lr_scale": 0.5}]
    data = [{"image": torch.rand(2, 1, 32, 32, 32) * 4 + 1, "label": (torch.rand(2, 1, 32, 32, 32) > 0.5).float()}] * 2
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=lambda y, t: F.cross_entropy(y, t[:, 0].long()),
        optim_set_to_none=True,
        train_handlers=[StagedUnfreezeHandler(net, opt, stages)],
    )
    start = {k: v.clone() for k, v in net.state_dict().items()}
    snaps = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: snaps.append({k: v.clone() for k, v in net.state_dict().items()})
    )
    trainer.run()

    def moved(state, prefix):
        return {k for k, v in state.items() if k.startswith(prefix) and not torch.equal(v, start[k])}

    assert moved(snaps[0], "encoder.") == set()  # weights and running stats of the frozen encoder
    assert moved(snaps[0], "decoder.") and moved(snaps[0], "segmentation_head.")
    assert moved(snaps[1], "encoder.layer4.0.bn1.running_mean") and moved(snaps[1], "encoder.layer4.0.conv1.")
    assert {k.split(".")[1] for k in moved(snaps[1], "encoder.")} == {"layer4"}


def test_drift_handler(tmp_path):
    net, opt = make()
    logged = []

    class Writer:
        def add_scalar(self, tag, value, step):
            logged.append((tag, value, step))

    def update(engine, batch):
        with torch.no_grad():
            net.encoder.layer1[0].conv1.weight.mul_(1.1)

    engine = Engine(update)
    DriftHandler(net, None, summary_writer=Writer(), every_n_epochs=2, output_dir=tmp_path).attach(engine)
    engine.run([0], max_epochs=2)
    drift = {tag: v for tag, v, step in logged}
    assert {step for _, _, step in logged} == {2}
    assert drift["drift/encoder.layer1.0.conv1"] == pytest.approx(0.21)  # 1.1**2 - 1
    assert drift["drift/encoder.layer2.0.conv1"] == 0.0 and "drift_stage/layer1" in drift
    assert (tmp_path / "drift.csv").is_file() and (tmp_path / "drift.png").is_file()
    with pytest.raises(ValueError, match=r"'every_n_epochs' must be an integer >= 1, got 0"):
        DriftHandler(net, None, every_n_epochs=0)


# ------------------------------------------------------------------------------------------------ DDP (2 ranks, gloo)
def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        net = PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL)
        errors = []
        try:  # default DDP cannot skip frozen stages
            plain_ddp = DDP(PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL))
            StagedUnfreezeHandler(plain_ddp, torch.optim.AdamW(param_groups(plain_ddp, LR), lr=LR), STAGES)
        except ValueError as e:
            errors.append(str(e))
        early = PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL)
        freeze(early, "encoder")  # frozen before wrapping: DDP would never all-reduce them after unfreezing
        try:
            early_ddp = DDP(early, find_unused_parameters=True)
            StagedUnfreezeHandler(early_ddp, torch.optim.AdamW(param_groups(early_ddp, LR), lr=LR), STAGES)
        except ValueError as e:
            errors.append(str(e))

        ddp = DDP(net, find_unused_parameters=True)
        opt = torch.optim.AdamW(param_groups(ddp, LR), lr=LR)
        start = {k: v.clone() for k, v in net.state_dict().items()}
        torch.manual_seed(100 + rank)  # different data on each rank
        data = [(torch.rand(2, 1, 32, 32), (torch.rand(2, 32, 32) > 0.5).long()) for _ in range(2)]
        stages_seen = []

        def update(engine, batch):
            ddp.train()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ddp(batch[0]), batch[1]).backward()
            opt.step()
            stages_seen.append(net.trainable_stages())

        engine = Engine(update)
        StagedUnfreezeHandler(ddp, opt, STAGES).attach(engine)
        engine.run(data, max_epochs=4)
        end = {n: p.detach() for n, p in net.named_parameters()}  # BN buffers follow DDP's broadcast_buffers
        torch.save({"start": start, "end": end, "stages": stages_seen, "errors": errors}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_stay_identical_across_transitions(tmp_path):
    # fork (like DataLoader workers) skips re-importing torch/monai in each rank; workers use 1 thread
    ctx = mp.start_processes(
        _ddp_worker, (2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("DDP workers did not finish within 120 s")
    r0, r1 = (torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["stages"] == r1["stages"] and r0["stages"][3] == ["decoder", "head"] and len(r0["stages"][-1]) == 7
    for k, v in r0["end"].items():
        assert torch.equal(v, r1["end"][k]), k
    assert not torch.equal(r0["end"]["encoder.conv1.weight"], r0["start"]["encoder.conv1.weight"])  # trained in epoch 4
    assert "find_unused_parameters=True" in r0["errors"][0]
    assert "were already frozen" in r0["errors"][1]

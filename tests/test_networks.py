from __future__ import annotations

import pytest
import torch
from monai.utils import set_determinism

from pipeline.networks.unet import PretrainedUNet
from pipeline.networks.weights import pretrained_network

torch.set_num_threads(1)
SMALL = (8, 8, 8, 8, 8)


@pytest.fixture(autouse=True)
def _seed():
    set_determinism(0)
    yield
    set_determinism(None)


def test_resnet_stages_partition_parameters():
    net = PretrainedUNet(3, 1, 3, "resnet10", decoder_channels=SMALL)
    assert net.stage_names == ("stem", "layer1", "layer2", "layer3", "layer4", "decoder", "head")
    counted = sum(p.numel() for s in net.stage_names for _, p in net.named_stage_parameters(s))
    assert counted == sum(p.numel() for p in net.parameters())
    # head = conv3d(8 -> 3, k=3) + bias
    assert sum(p.numel() for p in net.head_parameters()) == 3 * 8 * 27 + 3
    assert net.stage_of("encoder.conv1.weight") == "stem"
    assert net.stage_of("encoder.layer3.0.bn1.running_mean") == "layer3"
    assert net.stage_of("module.encoder.layer1.0.conv1.weight") == "layer1"  # DDP prefix
    assert net.stage_of("decoder.blocks.0.convs.conv_0.conv.weight") == "decoder"
    assert net.stage_of("segmentation_head.0.bias") == "head"
    with pytest.raises(ValueError, match="belongs to no stage"):
        net.stage_of("classifier.weight")


def test_efficientnet_stages_exclude_unused_head():
    net = PretrainedUNet(2, 3, 2, "efficientnet-b0", decoder_channels=SMALL)
    assert net.stage_names == ("stem", "blocks1", "blocks2", "blocks3", "blocks4", "blocks5", "decoder", "head")
    # b0 global block 10 is in MONAI stack 4, which feeds the 4th feature map (stride 16)
    assert net.stage_of("encoder._blocks.4.10._bn2.weight") == "blocks4"
    assert net.stage_of("encoder._blocks.0.0._depthwise_conv.weight") == "blocks1"
    unused = [n for n, _ in net.named_parameters() if net.stage_of(n) == "unused"]
    assert unused == [
        "encoder._conv_head.weight",
        "encoder._bn1.weight",
        "encoder._bn1.bias",
        "encoder._fc.weight",
        "encoder._fc.bias",
    ]
    staged = {n for s in net.stage_names for n, _ in net.named_stage_parameters(s)}
    assert staged.isdisjoint(unused)
    assert len(staged) + len(unused) == len(list(net.parameters()))
    net.set_trainable("all", trainable=True)
    assert not any(p.requires_grad for n, p in net.named_parameters() if n in unused)


@pytest.mark.parametrize(
    "dims, backbone, cin, cout, size",
    [(3, "resnet10", 1, 3, (32, 32, 32)), (2, "resnet18", 3, 4, (32, 32)), (2, "efficientnet-b0", 1, 2, (32, 32))],
)
def test_forward_shapes(dims, backbone, cin, cout, size):
    net = PretrainedUNet(dims, cin, cout, backbone, decoder_channels=SMALL).eval()
    with torch.no_grad():
        y = net(torch.rand(1, cin, *size))
    assert y.shape == (1, cout, *size)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"backbone": "resnet19"}, ValueError, r"Unknown backbone 'resnet19'; available: .*Did you mean 'resnet1"),
        ({"spatial_dims": 4}, ValueError, r"'spatial_dims' must be 2 or 3, got 4"),
        ({"out_channels": 0}, ValueError, r"'out_channels' must be a positive integer, got 0"),
        ({"decoder_channels": (8, 8, 8, 8)}, ValueError, r"'decoder_channels' must be 5 positive integers"),
        ({"pretrained": True}, TypeError, r"PretrainedUNet does not load weights, got \['pretrained'\]\. Fix"),
        ({"dropout": 1.5}, ValueError, r"'dropout' must be a float in \[0, 1\), got 1.5"),
    ],
)
def test_init_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        PretrainedUNet(**{"decoder_channels": SMALL, **kwargs})


@pytest.mark.parametrize(
    "pretrained, err, match",
    [
        (True, ValueError, r"'pretrained' must be a local path .* got True"),
        ("/nope/model.pt", FileNotFoundError, r"'pretrained': '/nope/model.pt' does not exist"),
    ],
)
def test_pretrained_network_validation(pretrained, err, match):
    with pytest.raises(err, match=match):
        pretrained_network(PretrainedUNet(decoder_channels=SMALL), pretrained)


def test_the_network_has_no_weight_loading_arguments():
    # weights come only through pipeline.networks.weights.load_pretrained (local files; nothing is downloaded)
    for name in ("pretrained", "download_pretrained", "pretrained_options"):
        with pytest.raises(TypeError):
            PretrainedUNet(decoder_channels=SMALL, **{name: None})


def test_pretrained_path_round_trip(tmp_path):
    src = PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL)
    assert pretrained_network(dst, str(tmp_path / "w.pt")) is dst
    assert dst.load_report.missing == [] and dst.load_report.adapted == []
    assert dst.load_report.reference.keys() == src.state_dict().keys()  # what drift measures from
    assert "reference" not in dst.load_report.to_dict()
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_frozen_norm_layers_stay_in_eval_after_train():
    net = PretrainedUNet(2, 1, 2, "resnet10", decoder_channels=SMALL)
    net.set_trainable("encoder", trainable=False)
    net.train()
    assert not net.encoder.bn1.training and not net.encoder.layer4[0].bn2.training
    assert net.decoder.blocks[0].convs.conv_0.adn.N.training
    assert net.trainable_stages() == ["decoder", "head"]
    before = net.encoder.layer1[0].bn1.running_mean.clone()
    net(torch.rand(2, 1, 32, 32) * 5 + 3)
    assert torch.equal(net.encoder.layer1[0].bn1.running_mean, before)
    net.set_trainable(["layer4"], trainable=True)
    assert net.encoder.layer4[0].bn2.training and not net.encoder.layer3[0].bn2.training
    net.eval()
    assert not net.decoder.blocks[0].convs.conv_0.adn.N.training


def test_efficientnet_still_scripts():
    # the stage properties must not break torch.jit.script (pack exports TorchScript; resnet needs tracing anyway)
    net = PretrainedUNet(2, 1, 2, "efficientnet-b0", decoder_channels=SMALL).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(net)(x), net(x), atol=1e-5)

from __future__ import annotations

import argparse
import json
import math
import re
import zipfile

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNet, ResNetFeatures
from monai.utils import set_determinism
from safetensors.torch import save_file

from pipeline.commands import drift as drift_cmd
from pipeline.networks.drift import LayerDrift, layer_drift, plot_drift, write_drift_csv
from pipeline.networks.sources import read_state_dict
from pipeline.networks.stages import freeze, param_groups, unfreeze
from pipeline.networks.unet import PretrainedUNet
from pipeline.networks.weights import ArchitectureMismatchError, adapt_input_channels, load_pretrained

torch.set_num_threads(1)
SMALL = (8, 8, 8, 8, 8)


@pytest.fixture(autouse=True)
def _seed():
    set_determinism(0)
    yield
    set_determinism(None)


def unet(dims=3, cin=1, cout=2, backbone="resnet10"):
    return PretrainedUNet(dims, cin, cout, backbone, decoder_channels=SMALL)


def write_bundle(root, net, class_names):
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    channel_def = {str(i): n for i, n in enumerate(class_names)}
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": channel_def}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root


# ------------------------------------------------------------------------------------------------ reading
def test_read_state_dict_sources(tmp_path):
    sd = {"a.weight": torch.ones(2, 2), "a.bias": torch.zeros(2)}
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"network": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, tmp_path / "ckpt.pth")
    torch.save({"state_dict": sd, "arch": "resnet"}, tmp_path / "medicalnet.pth")
    save_file(sd, str(tmp_path / "w.safetensors"))
    write_bundle(tmp_path / "bundle", torch.nn.Linear(2, 2), ["a", "b"])
    with zipfile.ZipFile(tmp_path / "bundle.zip", "w") as zf:
        zf.write(tmp_path / "bundle" / "models" / "model.pt", "my_bundle/models/model.pt")
    for name in ("plain.pt", "ckpt.pth", "medicalnet.pth", "w.safetensors"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == {"a.weight", "a.bias"} and torch.equal(got["a.weight"], torch.ones(2, 2)), name
    assert set(read_state_dict(tmp_path / "bundle")) == {"weight", "bias"}
    assert set(read_state_dict(tmp_path / "bundle.zip")) == {"weight", "bias"}


def test_read_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"'.*missing.pt' does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    (tmp_path / "empty_bundle" / "models").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"expected models/model.pt, found models/ = \[\]"):
        read_state_dict(tmp_path / "empty_bundle")
    torch.save({"model": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")  # arbitrary object: refused
    with pytest.raises(ValueError, match=r"not loadable with torch.load\(weights_only=True\)"):
        read_state_dict(tmp_path / "pickled.pt")
    torch.save({"epoch": 3}, tmp_path / "no_tensors.pt")
    with pytest.raises(ValueError, match=r"no tensors found.*got \['epoch'\]"):
        read_state_dict(tmp_path / "no_tensors.pt")


# ------------------------------------------------------------------------------------------------ key mapping
def test_medicalnet_naming_loads_encoder(tmp_path):
    src = ResNetFeatures("resnet10", pretrained=False, spatial_dims=3, in_channels=1)
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}
    sd["module.conv_seg.0.weight"] = torch.zeros(2, 512, 1, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "resnet_10.pth")
    net = unet()
    report = load_pretrained(net, tmp_path / "resnet_10.pth", report_path=tmp_path / "report.json")
    assert report.source_format == "medicalnet-resnet"
    assert report.skipped_by_pattern == ["module.conv_seg.0.weight"]
    assert report.unexpected == [] and report.shape_mismatched == []
    assert all(k.startswith(("decoder.", "segmentation_head.")) for k in report.missing)
    assert torch.equal(net.encoder.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    assert torch.equal(net.encoder.bn1.running_var, src.bn1.running_var)
    assert json.loads((tmp_path / "report.json").read_text())["source_format"] == "medicalnet-resnet"


def test_torchvision_resnet_2d_rgb_into_grey(tmp_path):
    # torchvision naming == MONAI ResNet naming: conv1, bn1, layerN.i.{conv,bn}k, layerN.0.downsample.{0,1}, fc
    src = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=3, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "resnet18-tv.pth")
    net = unet(dims=2, cin=1, backbone="resnet18")  # MONAI resnet18 uses shortcut "A": no downsample weights
    report = load_pretrained(net, tmp_path / "resnet18-tv.pth")
    assert report.source_format == "resnet"
    assert set(report.skipped_by_pattern) == {"fc.weight", "fc.bias"}
    assert report.unexpected and all(".downsample." in k for k in report.unexpected)
    assert report.adapted == [{"key": "encoder.conv1.weight", "how": "input channels 3 -> 1: summed cyclically"}]
    assert torch.allclose(net.encoder.conv1.weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.encoder.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_efficientnet_pytorch_naming(tmp_path):
    ref = unet(dims=2, cin=3, backbone="efficientnet-b0")
    # EfficientNet-PyTorch names blocks by global index only: _blocks.5.* is MONAI's _blocks.3.5.*
    sd = {re.sub(r"^_blocks\.\d+\.", "_blocks.", k): v for k, v in ref.encoder.state_dict().items()}
    assert "_blocks.5._expand_conv.weight" in sd
    torch.save(sd, tmp_path / "efficientnet-b0-355c32eb.pth")
    net = unet(dims=2, cin=3, backbone="efficientnet-b0")
    report = load_pretrained(net, tmp_path / "efficientnet-b0-355c32eb.pth")
    assert report.source_format == "efficientnet-pytorch" and report.unexpected == []
    assert torch.equal(net.encoder._blocks[3][0]._expand_conv.weight, sd["_blocks.5._expand_conv.weight"])
    assert len(report.loaded) == len(sd)


# ------------------------------------------------------------------------------------------------ adaptation
@pytest.mark.parametrize(
    "cin, cout, expected",
    [
        (1, 3, [[2 / 3, 2 / 3, 2 / 3]]),  # repeat, divide by 3
        (3, 1, [[7.0]]),  # sum 1 + 2 + 4
        (3, 6, [[0.5, 1.0, 2.0, 0.5, 1.0, 2.0]]),  # cyclic, x 3/6
    ],
)
def test_adapt_input_channels_numbers(cin, cout, expected):
    w = torch.tensor([[2.0]]) if cin == 1 else torch.tensor([[1.0, 2.0, 4.0]])
    got = adapt_input_channels(w.view(1, cin, 1, 1), cout)
    assert torch.allclose(got.view(1, cout), torch.tensor(expected))


def test_constant_image_gives_same_stem_output(tmp_path):
    src = unet(cin=1)
    torch.save(src.state_dict(), tmp_path / "grey.pt")
    net = unet(cin=3)
    report = load_pretrained(net, tmp_path / "grey.pt")
    assert report.adapted[0]["how"] == "input channels 1 -> 3: repeated cyclically, divided by copies"
    img = torch.full((1, 1, 8, 8, 8), 0.7)
    out_src = F.conv3d(img, src.encoder.conv1.weight, padding=3)
    out_new = F.conv3d(img.repeat(1, 3, 1, 1, 1), net.encoder.conv1.weight, padding=3)
    assert torch.allclose(out_src, out_new, atol=1e-5)


def test_head_adaptation_by_class_names(tmp_path):
    src = unet(cout=3)
    bundle = write_bundle(tmp_path / "site_a", src, ["background", "organ", "vessel"])
    net = unet(cout=4)
    names = ["background", "organ", "lesion", "vessel"]  # a local folder (no manifest.json): trusted explicitly
    report = load_pretrained(net, bundle, target_class_names=names, trust_unverified=True)
    w, sw = net.segmentation_head[0].weight, src.segmentation_head[0].weight
    assert torch.equal(w[0], sw[0]) and torch.equal(w[1], sw[1]) and torch.equal(w[3], sw[2])
    assert not torch.equal(w[2], sw[2])
    assert report.adapted[-1]["key"] == "segmentation_head.0"
    assert "out_channels 3 -> 4: freshly initialised" in report.adapted[-1]["how"]
    assert report.shape_mismatched == [] and report.missing == []
    # explicit mapping, and a bad name
    net2 = unet(cout=2)
    kwargs = {"target_class_names": ["background", "tumour"], "trust_unverified": True}
    load_pretrained(net2, bundle, class_mapping={"tumour": "vessel"}, **kwargs)
    assert torch.equal(net2.segmentation_head[0].bias[1], src.segmentation_head[0].bias[2])
    with pytest.raises(ValueError, match=r"'class_mapping': 'liver' is not a source class; valid: \['background'"):
        load_pretrained(net2, bundle, class_mapping={"tumour": "liver"}, **kwargs)


def test_class_mapping_without_a_source_head_is_not_silent(tmp_path, caplog):
    bundle = write_bundle(tmp_path / "site_a", unet(cout=3), ["background", "organ", "vessel"])
    with caplog.at_level("WARNING", logger="pipeline.networks.weights"):
        load_pretrained(
            unet(cout=2), bundle, exclude=["segmentation_head"], class_mapping={"tumour": "vessel"},
            target_class_names=["background", "tumour"], trust_unverified=True,
        )  # fmt: skip
    assert "'class_mapping' {'tumour': 'vessel'} ignored: the source has no segmentation head" in caplog.text


def test_head_reinitialised_without_names(tmp_path):
    src = unet(cout=3)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    net = unet(cout=2)
    report = load_pretrained(net, tmp_path / "w.pt")
    assert report.adapted == [
        {"key": "segmentation_head.0", "how": "out_channels 3 -> 2: freshly initialised; copied channels []"}
    ]
    assert torch.equal(net.decoder.blocks[0].convs.conv_0.conv.weight, src.decoder.blocks[0].convs.conv_0.conv.weight)


# ------------------------------------------------------------------------------------------------ mismatches
def _meta_encoder_state(name, dims, cin):
    with torch.device("meta"):
        enc = ResNetFeatures(name, pretrained=False, spatial_dims=dims, in_channels=cin)
    return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in enc.state_dict().items()}


def test_architecture_mismatch_is_an_error(tmp_path):
    torch.save(_meta_encoder_state("resnet34", 2, 1), tmp_path / "r34.pt")
    with pytest.raises(
        ArchitectureMismatchError, match=r"resnet34-like \(\[3, 4, 6, 3\] basic.*resnet18-like.*layer1\.2"
    ):
        load_pretrained(unet(dims=2, backbone="resnet18"), tmp_path / "r34.pt")
    torch.save(_meta_encoder_state("resnet10", 2, 1), tmp_path / "r10_2d.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"resnet10-like.*missing: \['encoder\.layer1\.1\."):
        load_pretrained(unet(dims=2, backbone="resnet18"), tmp_path / "r10_2d.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"encoder.conv1.weight has shape \[64, 1, 7, 7\] \(2D kernel"):
        load_pretrained(unet(dims=3), tmp_path / "r10_2d.pt")
    full = PretrainedUNet(3, 1, 2, "resnet10", decoder_channels=(16, 8, 8, 8, 8))
    torch.save(full.state_dict(), tmp_path / "wide_decoder.pt")
    with pytest.raises(ArchitectureMismatchError, match=r"shape mismatched: \['decoder\.blocks\.0"):
        load_pretrained(unet(), tmp_path / "wide_decoder.pt")
    report = load_pretrained(unet(), tmp_path / "wide_decoder.pt", exclude=[r"^decoder\.", r"^segmentation_head\."])
    assert len(report.skipped_by_pattern) > 0 and report.missing == []


def test_strict_and_nothing_matched(tmp_path):
    src = ResNetFeatures("resnet10", pretrained=False, spatial_dims=2, in_channels=1)
    torch.save(src.state_dict(), tmp_path / "enc.pt")
    with pytest.raises(ValueError, match=r"strict=True.*failures \['decoder\."):
        load_pretrained(unet(dims=2), tmp_path / "enc.pt", strict=True)
    ok = load_pretrained(unet(dims=2), tmp_path / "enc.pt", strict=True, exclude=[r"^(decoder|segmentation_head)\."])
    assert len(ok.loaded) == len(src.state_dict())
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"no tensor matched the network \(detected format 'unknown'\)"):
        load_pretrained(unet(dims=2), tmp_path / "other.pt")


# ------------------------------------------------------------------------------------------------ freezing, groups
def test_freeze_unfreeze_and_param_groups():
    net = unet(dims=2)
    changed = freeze(net, "encoder")
    assert changed and all(not p.requires_grad for p in net.encoder_parameters())
    assert all(p.requires_grad for p in net.decoder_parameters())
    assert unfreeze(net, regex=r"^encoder\.layer4\.") and net.trainable_stages() == ["layer4", "decoder", "head"]
    with pytest.raises(ValueError, match=r"Unknown stage 'layer5'.*Did you mean 'layer"):
        freeze(net, ["layer5"])
    with pytest.raises(ValueError, match=r"'regex' '\^nope' matches no parameter"):
        freeze(net, regex="^nope")
    with pytest.raises(TypeError, match=r"Expected a pipeline.networks.unet.PretrainedUNet"):
        freeze(torch.nn.Linear(2, 2), "encoder")

    groups = param_groups(net, 1e-3, stage_lr_scale={"encoder": 0.1, "layer4": 0.5}, weight_decay=0.0)
    assert [g["name"] for g in groups] == list(net.stage_names)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"stem": 1e-4, "layer1": 1e-4, "layer2": 1e-4, "layer3": 1e-4, "layer4": 5e-4, "decoder": 1e-3, "head": 1e-3}
    )
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert opt.param_groups[4]["name"] == "layer4"
    with pytest.raises(ValueError, match=r"Unknown stage 'bottleneck'"):
        param_groups(net, 1e-3, stage_lr_scale={"bottleneck": 0.1})


# ------------------------------------------------------------------------------------------------ drift
def test_layer_drift_hand_computed(tmp_path):
    before = {
        "a.weight": torch.tensor([3.0, 0.0]),
        "a.bias": torch.tensor([4.0]),  # ||W_a|| = 5
        "bn.running_mean": torch.zeros(2),
        "b.weight": torch.tensor([0.0, 0.0]),
        "c.weight": torch.tensor([1.0, 1.0]),
    }
    after = {
        "a.weight": torch.tensor([3.0, 0.0]),
        "a.bias": torch.tensor([5.0]),  # ||dW|| = 1 -> 0.2
        "bn.running_mean": torch.ones(2),  # buffers are ignored
        "b.weight": torch.tensor([0.0, 2.0]),  # zero before -> inf
        "c.weight": torch.tensor([1.0, 1.0]),
    }
    rows = layer_drift(before, after)
    assert [r.layer for r in rows] == ["a", "b", "c"]
    assert rows[0].rel_change == pytest.approx(0.2) and math.isinf(rows[1].rel_change) and rows[2].rel_change == 0
    csv_text = write_drift_csv(rows, tmp_path / "d.csv").read_text()
    assert csv_text.splitlines()[:2] == ["order,layer,rel_change", "0,a,0.2"]
    assert plot_drift([LayerDrift("a", 0.2)], tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"no parameter names in common"):
        layer_drift({"x.weight": torch.ones(1)}, {"y.weight": torch.ones(1)})


def test_drift_command(tmp_path, capsys):
    net = unet(dims=2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.encoder.state_dict().items()}}, tmp_path / "pre.pth")
    with torch.no_grad():
        net.encoder.layer4[0].conv1.weight.mul_(1.5)
    write_bundle(tmp_path / "tuned", net, ["background", "organ"])
    parser = argparse.ArgumentParser()
    drift_cmd.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "pre.pth"), str(tmp_path / "tuned"), "--out", str(tmp_path / "out")])
    assert drift_cmd.run(args) == 0
    out = capsys.readouterr().out
    top = out.splitlines()[2].split()
    assert top == ["0.5", "encoder.layer4.0.conv1"]
    assert (tmp_path / "out" / "drift.csv").is_file() and (tmp_path / "out" / "drift.png").is_file()
    args.after = tmp_path / "missing"
    assert drift_cmd.run(args) == 1

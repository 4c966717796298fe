"""PretrainedUNet: a MONAI ``FlexibleUNet`` with named encoder stages and freeze state; no file I/O.

Weights are loaded by :func:`pipeline.networks.weights.load_pretrained` (local files only; nothing is downloaded).

Stages are ordered input -> output and partition every used parameter:

- ResNet backbones: ``("stem", "layer1", "layer2", "layer3", "layer4", "decoder", "head")``.
- EfficientNet backbones: ``("stem", "blocks1", ..., "blocks5", "decoder", "head")``; ``blocksK`` holds the MBConv
  stacks that produce the K-th encoder feature map. ``_conv_head``, ``_bn1`` and ``_fc`` are never used by the U-Net:
  they belong to no stage (:func:`PretrainedUNet.stage_of` returns ``"unused"``) and stay frozen.

Freeze state lives on the model: a frozen parameter has ``requires_grad=False`` and a norm layer whose parameters are
all frozen stays in eval mode even after ``network.train()`` (the trainer calls it every iteration), so its running
statistics do not move.
"""

from __future__ import annotations

import bisect
import difflib
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE
from torch import nn

import pipeline.networks.efficientnet_lite  # noqa: F401  (registers the efficientnet-lite0 backbone)

__all__ = [
    "BACKBONES",
    "STAGE_ALIASES",
    "UNUSED_STAGE",
    "PretrainedUNet",
    "as_unet",
    "unwrap",
]

logger = logging.getLogger(__name__)

BACKBONES: tuple[str, ...] = tuple(FLEXUNET_BACKBONE.register_dict)
UNUSED_STAGE = "unused"
STAGE_ALIASES: tuple[str, ...] = ("encoder", "all")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    *(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm),
    *(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm),
)
_RESNET_STEM = {"conv1", "bn1", "act", "maxpool"}
_EFFNET_STEM = {"_conv_stem", "_conv_stem_padding", "_bn0", "_swish"}
_EFFNET_UNUSED = {"_conv_head", "_conv_head_padding", "_bn1", "_fc", "_avg_pooling", "_dropout"}


def _validate(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    backbone: str,
    decoder_channels: Sequence[int],
    dropout: Any,
) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"'spatial_dims' must be 2 or 3, got {spatial_dims!r}.")
    for key, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"'{key}' must be a positive integer, got {value!r}.")
    if backbone not in BACKBONES:
        close = difflib.get_close_matches(str(backbone), BACKBONES, n=3, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown backbone {backbone!r}; available: {list(BACKBONES)}.{hint}")
    n_feat = FLEXUNET_BACKBONE.register_dict[backbone]["feature_number"]
    if (
        isinstance(decoder_channels, (str, bytes))
        or len(decoder_channels) != n_feat
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_channels)
    ):
        raise ValueError(
            f"'decoder_channels' must be {n_feat} positive integers (one per decoder block, deepest first), "
            f"got {decoder_channels!r}. Example: (64, 32, 16, 16, 8)."
        )
    if not isinstance(dropout, (tuple, list)) and not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"'dropout' must be a float in [0, 1), got {dropout!r}.")


class PretrainedUNet(FlexibleUNet):
    """U-Net with a ResNet or EfficientNet encoder and named stages.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels C_in.
        out_channels: classes C_out (including background).
        backbone: one of :data:`BACKBONES` (``resnet10`` ... ``resnet200``, ``efficientnet-b0`` ... ``-l2``).
        decoder_channels: 5 decoder widths, deepest first.
        norm: decoder normalization (MONAI's encoders always use batch norm).
        dropout: decoder dropout.
        kwargs: other ``FlexibleUNet`` arguments (``act``, ``upsample``, ``interp_mode``, ``is_pad``, ...).

    Shapes:
        input ``(B, C_in, H, W[, D])`` -> output logits ``(B, C_out, H, W[, D])``.
    """

    __jit_unused_properties__ = ["stage_names", "encoder_stage_names"]  # keep torch.jit.script working

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        backbone: str = "resnet10",
        decoder_channels: Sequence[int] = (64, 32, 16, 16, 8),
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        dropout: float | tuple = 0.0,
        **kwargs: Any,
    ) -> None:
        loading = sorted(k for k in ("pretrained", "download_pretrained", "pretrained_options") if k in kwargs)
        if loading:
            raise TypeError(
                f"PretrainedUNet does not load weights, got {loading}. Fix: set the bundle's 'pretrained' (and "
                "'pretrained_options') ids, or call pipeline.networks.weights.load_pretrained(network, path) after "
                "building it; weights are local files only, nothing is downloaded."
            )
        decoder_channels = tuple(decoder_channels) if isinstance(decoder_channels, list) else decoder_channels
        _validate(
            spatial_dims,
            in_channels,
            out_channels,
            backbone,
            decoder_channels,
            dropout,
        )
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=backbone,
            pretrained=False,
            decoder_channels=tuple(decoder_channels),
            spatial_dims=spatial_dims,
            norm=norm,
            dropout=dropout,
            **kwargs,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.is_efficientnet = backbone.startswith("efficientnet")
        if self.is_efficientnet:
            extract = list(getattr(self.encoder, "extract_stacks", [1, 2, 3, 5, 7]))
            n_stacks = len(self.encoder._blocks)
            self._stack_group = {s: bisect.bisect_right(extract, s) + 1 for s in range(n_stacks)}
            groups = tuple(f"blocks{g}" for g in sorted(set(self._stack_group.values())))
            self._stages: tuple[str, ...] = ("stem", *groups, "decoder", "head")
        else:
            self._stages = ("stem", "layer1", "layer2", "layer3", "layer4", "decoder", "head")
        for name, p in self.named_parameters():
            if self.stage_of(name) == UNUSED_STAGE:
                p.requires_grad_(False)
        self.load_report: Any = None  # set by pipeline.networks.weights.load_pretrained

    # ----------------------------------------------------------------------------------------------- stages
    @property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names, input -> output; the last two are ``"decoder"`` and ``"head"``."""
        return self._stages

    @property
    def encoder_stage_names(self) -> tuple[str, ...]:
        return self._stages[:-2]

    def stage_of(self, name: str) -> str:
        """Stage of a parameter, buffer or module name (a leading ``module.`` from DDP is ignored).

        Returns:
            one of :attr:`stage_names`, or ``"unused"`` for EfficientNet's ``_conv_head``/``_bn1``/``_fc``.
        """
        parts = name.split(".")
        if parts[0] == "module":
            parts = parts[1:]
        top = parts[0] if parts else ""
        if top == "segmentation_head":
            return "head"
        if top == "decoder":
            return "decoder"
        if top == "encoder" and len(parts) > 1:
            sub = parts[1]
            if not self.is_efficientnet:
                if sub in _RESNET_STEM:
                    return "stem"
                if sub in self._stages:
                    return sub
            elif sub in _EFFNET_STEM:
                return "stem"
            elif sub in _EFFNET_UNUSED:
                return UNUSED_STAGE
            elif sub == "_blocks" and len(parts) > 2 and parts[2].isdigit():
                return f"blocks{self._stack_group[int(parts[2])]}"
        raise ValueError(
            f"Name {name!r} belongs to no stage of this {self.backbone} PretrainedUNet; expected a name under "
            "'encoder.', 'decoder.' or 'segmentation_head.' as in network.named_parameters()."
        )

    def expand_stages(self, stages: str | Iterable[str]) -> list[str]:
        """Resolve stage names and the aliases ``"encoder"`` (all encoder stages) and ``"all"`` (every stage)."""
        out: list[str] = []
        for s in [stages] if isinstance(stages, str) else list(stages):
            if s == "all":
                names: Sequence[str] = self._stages
            elif s == "encoder":
                names = self.encoder_stage_names
            elif s in self._stages:
                names = [s]
            else:
                valid = [*self._stages, *STAGE_ALIASES]
                close = difflib.get_close_matches(str(s), valid, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"Unknown stage {s!r} for backbone {self.backbone!r}; valid: {valid}.{hint}")
            out.extend(n for n in names if n not in out)
        return out

    def named_stage_parameters(self, stage: str) -> Iterator[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs of one stage (or alias), in registration order (input -> output)."""
        wanted = set(self.expand_stages(stage))
        for name, p in self.named_parameters():
            if self.stage_of(name) in wanted:
                yield name, p

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_stage_parameters("encoder")]

    def decoder_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_stage_parameters("decoder")]

    def head_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_stage_parameters("head")]

    # ----------------------------------------------------------------------------------------------- freezing
    def set_trainable(
        self, stages: str | Iterable[str] | None = None, *, regex: str | None = None, trainable: bool
    ) -> list[str]:
        """Freeze (``trainable=False``) or unfreeze parameters selected by stage names and/or a regex.

        With neither ``stages`` nor ``regex`` every stage is selected. Unused EfficientNet parameters are never
        unfrozen. Norm layers follow their parameters (see :meth:`train`).

        Returns:
            names of the parameters whose ``requires_grad`` changed.
        """
        selected = set(self.expand_stages("all" if stages is None and regex is None else (stages or [])))
        pattern = re.compile(regex) if regex is not None else None
        changed: list[str] = []
        matched = 0
        for name, p in self.named_parameters():
            stage = self.stage_of(name)
            if stage == UNUSED_STAGE or not (stage in selected or (pattern is not None and pattern.search(name))):
                continue
            matched += 1
            if p.requires_grad != trainable:
                p.requires_grad_(trainable)
                changed.append(name)
        if pattern is not None and matched == 0:
            raise ValueError(
                f"'regex' {regex!r} matches no parameter of this {self.backbone} PretrainedUNet; expected a pattern "
                "searched in names such as 'encoder.layer1.0.conv1.weight'. Fix: check it against named_parameters()."
            )
        self._apply_norm_modes()
        return changed

    def trainable_stages(self) -> list[str]:
        """Stages with at least one trainable parameter, input -> output."""
        live = {self.stage_of(n) for n, p in self.named_parameters() if p.requires_grad}
        return [s for s in self._stages if s in live]

    def frozen_norm_modules(self) -> list[tuple[str, nn.Module]]:
        """Norm layers whose parameters are all frozen (or, without parameters, whose stage is fully frozen)."""
        frozen_stages = {s for s in (*self._stages, UNUSED_STAGE)} - set(self.trainable_stages())
        out: list[tuple[str, nn.Module]] = []
        for name, m in self.named_modules():
            if not isinstance(m, _NORM_TYPES):
                continue
            params = list(m.parameters(recurse=False))
            if (params and not any(p.requires_grad for p in params)) or (
                not params and self.stage_of(name) in frozen_stages
            ):
                out.append((name, m))
        return out

    def _apply_norm_modes(self) -> None:
        if not self.training:
            return
        frozen = {id(m) for _, m in self.frozen_norm_modules()}
        for m in self.modules():
            if isinstance(m, _NORM_TYPES):
                m.train(id(m) not in frozen)

    def train(self, mode: bool = True) -> PretrainedUNet:
        """``nn.Module.train`` that keeps frozen norm layers in eval mode (their running stats stay put)."""
        super().train(mode)
        if mode:
            for _, m in self.frozen_norm_modules():
                m.eval()
        return self


def unwrap(network: nn.Module) -> nn.Module:
    """The module inside ``DataParallel``/``DistributedDataParallel`` wrappers (the network itself otherwise)."""
    while isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    return network


def as_unet(network: nn.Module) -> PretrainedUNet:
    """The :class:`PretrainedUNet` inside ``network`` (DDP-unwrapped); a clear ``TypeError`` for any other model."""
    net = unwrap(network)
    if not isinstance(net, PretrainedUNet):
        raise TypeError(
            f"Expected a pipeline.networks.unet.PretrainedUNet (optionally DDP-wrapped), got {type(net).__name__}. "
            "Fix: build the network with _target_: pipeline.networks.unet.PretrainedUNet."
        )
    return net

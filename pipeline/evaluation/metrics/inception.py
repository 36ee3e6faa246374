"""The Inception-v3 feature extractor of FID and IS, loaded from a weights file by path.

Two public file formats are accepted, both plain state dicts with torchvision's key names
(`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ..., `fc.weight`):

* pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`: the TensorFlow FID graph ported to
  PyTorch. 1008 output classes, no auxiliary classifier, and four blocks that differ from
  torchvision's in their pooling branch: Mixed_5b/5c/5d (InceptionA), Mixed_6b..6e (InceptionC)
  and Mixed_7b (first InceptionE) average-pool without counting the zero padding (TensorFlow's
  behaviour), and Mixed_7c (second InceptionE) max-pools instead of average-pooling. These are
  the FID-specific blocks; FID values are comparable with published numbers only with this file.
* torchvision's `inception_v3_google-0cc3c7bd.pth`: 1000 classes, with the auxiliary
  classifier's `AuxLogits.*` entries, standard blocks. Usable, but its FID is not comparable
  with published FID numbers.

The variant is recognised from the file (1008 classes: pytorch-fid; auxiliary entries: built
with aux_logits) and the network is torchvision's Inception3 built with weights=None and
init_weights=False, loaded strictly with `torch.load(..., weights_only=True)`. Older files
without `num_batches_tracked` entries load too (BatchNorm fills them in).

Input handling (pytorch-fid's): RGB in [0, 1] is resized to 299x299 bilinearly
(align_corners=False) and scaled to [-1, 1]; both files expect that range, so torchvision's
`transform_input` stays off. When an input is larger than 299 (a whole 1024x1024 image for
IS), the bilinear resize uses antialiasing, as PIL does; upsampling (a 256x256 block to 299)
is identical to pytorch-fid.

Outputs: the 2048-d average-pool features (FID) and the classifier logits (IS). The logits
for IS leave out the classifier's bias by default, like the original IS code (it multiplies
the pool features by the softmax weight matrix alone) and torch-fidelity's `logits_unbiased`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import inception as tv_inception

from pipeline.evaluation.metrics.weights import read_state_dict

FID_CLASSES = 1008
FEATURE_DIM = 2048


class FIDInceptionA(tv_inception.InceptionA):
    """InceptionA whose pooling branch averages over real pixels only (TF's avg_pool)."""

    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b5, b3, pool]


class FIDInceptionC(tv_inception.InceptionC):
    """InceptionC with TF's padding-excluding average pool."""

    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                     self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = conv(b7d)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b7, b7d, pool]


class FIDInceptionE(tv_inception.InceptionE):
    """InceptionE of the FID graph. Its pooling branch differs between the two blocks: Mixed_7b
    averages without the padding (`pool="avg"`), Mixed_7c max-pools (`pool="max"`)."""

    def __init__(self, in_channels: int, pool: str):
        super().__init__(in_channels)
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        if self.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), b3, b3d, self.branch_pool(pooled)]


def build_inception3(num_classes: int, aux_logits: bool, fid_blocks: bool) -> tv_inception.Inception3:
    """torchvision's Inception3 (no weights, no init), with the FID blocks swapped in if asked."""
    net = tv_inception.inception_v3(weights=None, num_classes=num_classes, aux_logits=aux_logits,
                                    init_weights=False, transform_input=False)
    if fid_blocks:
        net.Mixed_5b = FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = FIDInceptionE(1280, pool="avg")
        net.Mixed_7c = FIDInceptionE(2048, pool="max")
    return net


class InceptionFeatures(nn.Module):
    """Pool features [B, 2048] and logits [B, classes] of RGB images, as FID and IS use them."""

    def __init__(self, net: tv_inception.Inception3, variant: str, input_size: int = 299):
        super().__init__()
        self.net = net.eval()
        self.variant = variant
        self.input_size = int(input_size)
        self.num_classes = net.fc.out_features
        self.requires_grad_(False)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a,
                      n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, logits_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """`images`: float [B, 3, H, W] in [0, 1] (any size). Returns (features, logits) in float32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
        x = images.float()
        s = self.input_size
        if x.shape[-2:] != (s, s):
            shrinking = x.shape[-2] > s or x.shape[-1] > s
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=shrinking)
        feats = self._trunk(2.0 * x - 1.0)
        logits = feats @ self.net.fc.weight.t()
        if logits_bias:
            logits = logits + self.net.fc.bias
        return feats.float(), logits.float()

    def extract(self, images: np.ndarray, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B, H, W, 3] (numpy) -> (features [B, 2048], logits [B, k]) as float64 numpy."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float() / 255.0
        feats, logits = self(x)
        return feats.double().cpu().numpy(), logits.double().cpu().numpy()


def load_inception(path: str | os.PathLike, input_size: int = 299) -> InceptionFeatures:
    """The feature extractor from a pytorch-fid or torchvision Inception-v3 state dict file."""
    path = Path(path)
    state = read_state_dict(path, "Inception")
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"{path}: not an Inception-v3 state dict (no 'fc.weight' entry)")
    fc = state["fc.weight"]
    if fc.ndim != 2 or fc.shape[1] != FEATURE_DIM:
        raise ValueError(f"{path}: fc.weight has shape {tuple(fc.shape)}, expected [classes, {FEATURE_DIM}]")
    num_classes = int(fc.shape[0])
    fid_blocks = num_classes == FID_CLASSES
    aux = any(k.startswith("AuxLogits.") for k in state)
    net = build_inception3(num_classes, aux_logits=aux, fid_blocks=fid_blocks)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not match torchvision's Inception3 layout "
                         f"({num_classes} classes, aux_logits={aux}): {e}") from e
    variant = "pytorch-fid" if fid_blocks else "torchvision"
    return InceptionFeatures(net, variant=variant, input_size=input_size)

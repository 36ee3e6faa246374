"""Losses for VQGAN training: reconstruction, LPIPS perceptual distance, patch discriminator.

Perceptual loss (LPIPS, Zhang et al. 2018, the "vgg" variant taming uses). Nothing can be
downloaded, so it runs only when the user gives both weight files by path:
  * `lpips_vgg`: a torchvision VGG16 state dict (`vgg16-397923af.pth`; only `features.*` is used),
  * `lpips_lin`: the LPIPS linear layers (`vgg.pth` of the LPIPS project or taming's `vgg_lpips`
    file: `lin0.model.1.weight` ... `lin4.model.1.weight`, shapes [1, C, 1, 1]).
Both are read with `torch.load(weights_only=True)`. The network follows LPIPS: a fixed input
scaling, features after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, each unit-normalised over
channels, squared differences weighted by the linear layers, averaged over space, summed over layers.

Discriminator: the PatchGAN of pix2pix as taming uses it (3 stride-2 layers of 4x4 convolutions,
BatchNorm, LeakyReLU 0.2, one logit per patch) with the hinge loss. Choice: the adversarial term has
a fixed weight (`disc_weight`) instead of taming's adaptive weight (the ratio of gradient norms at
the decoder's last layer), because that ratio needs a second autograd pass through the generator,
which does not combine cleanly with DistributedDataParallel's gradient hooks; the discriminator
starts late (`disc_start`) as in taming, so the codebook settles first.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError

# torchvision's vgg16 `features` layout: numbers are conv widths, "M" a 2x2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# Indices (into `features`) just after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
LPIPS_TAPS = (4, 9, 16, 23, 30)
LPIPS_WIDTHS = (64, 128, 256, 512, 512)


class WeightsError(PipelineError, RuntimeError):
    pass


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return (recon - target).abs().mean()
    if kind == "l2":
        return F.mse_loss(recon, target)
    raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    width = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.ReLU(inplace=False)]
            width = int(item)
    return nn.Sequential(*layers)


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    import pickle

    if not path.is_file():
        raise WeightsError(f"{path}: {what} weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: {what} file needs full unpickling; convert it to a plain state dict "
                           f"({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise WeightsError(f"{path}: {what} file is not a readable torch checkpoint ({e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a state dict for {what}, found {type(obj).__name__}")
    return obj


class LPIPS(nn.Module):
    """Perceptual distance between image batches in [-1, 1]; returns one value per image [B]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in LPIPS_WIDTHS)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_files(cls, vgg_path: str | Path, lin_path: str | Path) -> LPIPS:
        net = cls()
        vgg_path, lin_path = Path(vgg_path), Path(lin_path)
        vgg = _load_tensors(vgg_path, "VGG16 (torchvision)")
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        want = net.features.state_dict()
        missing = sorted(set(want) - set(feats))
        if missing:
            raise WeightsError(f"{vgg_path}: not a torchvision VGG16 state dict: missing "
                               f"{['features.' + k for k in missing[:6]]}")
        for k in want:
            if tuple(feats[k].shape) != tuple(want[k].shape):
                raise WeightsError(f"{vgg_path}: features.{k} has shape {tuple(feats[k].shape)}, "
                                   f"VGG16 needs {tuple(want[k].shape)}")
        net.features.load_state_dict({k: feats[k] for k in want})
        lin = _load_tensors(lin_path, "LPIPS linear layers")
        for i, conv in enumerate(net.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin:
                raise WeightsError(f"{lin_path}: not an LPIPS 'vgg' weights file: missing {key} "
                                   f"(keys found: {sorted(lin)[:6]})")
            if tuple(lin[key].shape) != tuple(conv.weight.shape):
                raise WeightsError(f"{lin_path}: {key} has shape {tuple(lin[key].shape)}, "
                                   f"expected {tuple(conv.weight.shape)}")
            conv.weight.data.copy_(lin[key])
        return net

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always a fixed metric

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i + 1 in LPIPS_TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
                if i + 1 == LPIPS_TAPS[-1]:
                    break
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = 0.0
        for fa, fb, lin in zip(self._taps(a), self._taps(b), self.lins):
            total = total + lin((fa - fb).pow(2)).mean(dim=(1, 2, 3))
        return total


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming's NLayerDiscriminator layout): logits [B, 1, h, w]."""

    def __init__(self, in_channels: int = 3, width: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(width * prev, width * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(width * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(width * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN initialisation, as pix2pix / taming
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()

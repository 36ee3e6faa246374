"""VQGAN tokenizer with taming-transformers' architecture and parameter names.

The module tree (and so every state-dict key) follows taming's `VQModel` exactly, so the public
`vqgan_imagenet_f16_16384` weights load without renaming: `encoder.*`, `decoder.*`,
`quantize.embedding.weight`, `quant_conv.*`, `post_quant_conv.*` (343 tensors for the f16/16384
preset). The arithmetic matches theirs as well, because codes computed by one implementation must
decode with the other, and be the codes the other would compute:
  * GroupNorm(32 groups, eps 1e-6; `norm_groups` for small models) and swish everywhere; ResNet
    blocks with a 1x1 `nin_shortcut` when the width changes;
  * single-head attention with 1x1 convolutions (`q`, `k`, `v`, `proj_out`), softmax(q k^T / sqrt(c));
  * down-sampling: zero padding (left 0, right 1, top 0, bottom 1) then a 3x3 stride-2 conv;
  * up-sampling: nearest x2 then a 3x3 conv;
  * quantizer: nearest code by squared L2 distance (ties go to the lowest index, as torch.argmin).

Arithmetic, to the bit. By default (`set_arithmetic("taming")`, config `vqgan.arithmetic: taming`) every
operation is computed in taming's order: attention as bmm(q, k) * c^-0.5, softmax, bmm(v, weights^T);
swish as x * sigmoid(x). The encoder's latents are then bit-identical to a reference written op by op
like taming's modules, on the same weights, device and thread count (tests/test_vqgan_model.py), so the
codes match. `set_arithmetic("fast")` uses torch's fused `scaled_dot_product_attention` and `F.silu`:
the same maths, rounded differently, and codes can flip where two code distances nearly tie. Measured
on the project's 2-core CPU machine, shared with other jobs, f16/16384 with random weights
(`python -m pipeline.bench vqgan --device cpu --batch 2 --iters 1 --rounds 3`): 0 of 512 codes
differed, decoded pixels by at most 1.0e-5, and the speed was the same within the machine's noise
(encode 15.4 s taming against 14.5 s fast per batch of two 256x256 images, decode 24.4 against 24.1,
medians of three rounds that varied by up to 40%). On 8 images (6 random, 2 smooth) the latents differed
by at most 3.6e-6 and no code flipped, but the gap between the best and second-best code distance was
as small as 0 (median 3.3e-5), so near-ties do flip: issue 17 reports 3 of 512 codes chosen
differently against taming's own modules with the fused version (taming is not installed here to
re-measure that). "fast" keeps no [hw, hw] attention matrix: 256 KiB per image at 16x16 codes, but
64 MiB per image for a 1024x1024 image encoded whole; that is what it is for (large GPU batches).

Choices the taming code leaves open or that we make differently (training only):
  * Loss split. taming's quantizer returns `mean((zq.detach()-z)^2) + beta * mean((zq-z.detach())^2)`
    (the "legacy" form puts beta on the codebook term). We return the two terms separately,
    `codebook_loss = mean((zq - z.detach())^2)` and `commit_loss = mean((zq.detach() - z)^2)`, and the
    trainer weights them (VQ-VAE's form: beta on the commitment term).
  * Codebook use. We keep a plain learned codebook (no EMA buffers, so the state dict stays exactly
    taming's) and restart dead codes: `VectorQuantizer.restart_codes` overwrites codes that went
    unused for a while with encoder outputs from the current batch (as in Jukebox / improved VQGAN
    practice). The trainer decides when and which codes (it owns the usage counters and, under data
    parallel, keeps the ranks in agreement).

Images are [B, 3, H, W] in [-1, 1]; codes are int64 [B, h, w] with h = H / f. Video clips are
encoded frame by frame: [B, T, 3, H, W] -> [B, T, h, w].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.config import config_from_dict


@dataclass
class VQGANConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    z_channels: int = 256
    embed_dim: int = 256
    n_embed: int = 16384
    resolution: int = 256  # the training size; only decides which levels get attention (taming's rule)
    in_channels: int = 3
    out_ch: int = 3
    dropout: float = 0.0
    # GroupNorm groups. taming uses 32 (keep it for its weights). With ch = 32 that is one channel per
    # group, i.e. instance norm, which learns several times slower (measured on the demo data); the small
    # presets use 8 groups (4 channels per group, taming's ratio at ch = 128). Names and shapes are unchanged.
    norm_groups: int = 32

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        problems = []
        if not self.ch_mult or min(self.ch_mult) < 1:
            problems.append(f"ch_mult must be a non-empty list of positive ints, got {list(self.ch_mult)}")
        widths = {self.ch * m for m in self.ch_mult} | {self.ch}
        bad = sorted(w for w in widths if self.norm_groups < 1 or w % self.norm_groups)
        if bad:
            problems.append(f"every width ch*ch_mult must be a multiple of norm_groups ({self.norm_groups}); "
                            f"ch={self.ch}, ch_mult={list(self.ch_mult)} gives {bad}")
        if self.num_res_blocks < 1:
            problems.append(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.n_embed < 2 or self.embed_dim < 1 or self.z_channels < 1:
            problems.append("n_embed >= 2, embed_dim >= 1 and z_channels >= 1 are required")
        if self.resolution % self.downsample:
            problems.append(f"resolution {self.resolution} is not a multiple of the down-sampling "
                            f"factor {self.downsample}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("invalid VQGANConfig: " + "; ".join(problems))

    @property
    def downsample(self) -> int:
        """Pixels per code along each side (16 for f16)."""
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VQGANConfig:
        return config_from_dict(cls, d)


PRESETS: dict[str, dict] = {
    # taming-transformers' vqgan_imagenet_f16_16384 (76,073,859 parameters).
    "f16_16384": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                      z_channels=256, embed_dim=256, n_embed=16384, resolution=256),
    # The offline CPU demo: f8 on 128x128 crops (16x16 codes), attention at the 16x16 level, about 1.2M
    # parameters; the full-resolution level is kept at 32 channels because it dominates CPU time. On 60
    # demo landscapes (batch 4, lr 1e-3) its L1 reconstruction error reached ~0.11 after 75 steps with 8
    # norm groups; with 32 groups it was still ~0.3 after 200 steps (and ch=64 cost 4x the compute).
    "tiny_f8": dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(16,),
                    z_channels=64, embed_dim=64, n_embed=256, resolution=128, norm_groups=8),
    # Tests: f16 with attention at the bottom level of 64x64 inputs.
    "tiny_f16": dict(ch=32, ch_mult=(1, 1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                     z_channels=32, embed_dim=32, n_embed=64, resolution=64, norm_groups=8),
}


def preset(name: str, **overrides) -> VQGANConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown VQGAN preset {name!r}; known: {sorted(PRESETS)}")
    return VQGANConfig(**{**PRESETS[name], **overrides})


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor, exact: bool) -> torch.Tensor:
    """x * sigmoid(x): as taming writes it when `exact`, else torch's fused SiLU (rounds differently)."""
    return x * torch.sigmoid(x) if exact else F.silu(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float, groups: int = 32):
        super().__init__()
        self.exact = True  # taming's arithmetic (VQGAN.set_arithmetic)
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x), self.exact))
        h = self.conv2(self.dropout(swish(self.norm2(h), self.exact)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of the feature map (global, not windowed)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.exact = True  # taming's arithmetic (VQGAN.set_arithmetic)
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = self.q(y).reshape(b, c, h * w), self.k(y).reshape(b, c, h * w), self.v(y).reshape(b, c, h * w)
        if self.exact:  # taming's order of operations: scores, then the scale, softmax, weights transposed
            weights = torch.softmax(torch.bmm(q.transpose(1, 2), k) * int(c) ** -0.5, dim=2)
            out = torch.bmm(v, weights.transpose(1, 2))
        else:  # the same maths fused (no [hw, hw] matrix in memory); rounds differently
            out = F.scaled_dot_product_attention(q.transpose(1, 2)[:, None], k.transpose(1, 2)[:, None],
                                                 v.transpose(1, 2)[:, None])[:, 0].transpose(1, 2)
        return x + self.proj_out(out.reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block`, `attn` (ModuleLists) and an optional `downsample`/`upsample`."""


class _Mid(nn.Module):
    def __init__(self, channels: int, dropout: float, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, dropout, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.exact = True
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + cfg.ch_mult
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            level = _Level()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            width_in, width = cfg.ch * in_mult[i], cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                level.block.append(ResnetBlock(width_in, width, cfg.dropout, cfg.norm_groups))
                width_in = width
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(width, cfg.norm_groups))
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(width)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(width, cfg.dropout, cfg.norm_groups)
        self.norm_out = _norm(width, cfg.norm_groups)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(swish(self.norm_out(h), self.exact))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.exact = True
        width = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // cfg.downsample
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 3, padding=1)
        self.mid = _Mid(width, cfg.dropout, cfg.norm_groups)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            level = _Level()
            level.block, level.attn = nn.ModuleList(), nn.ModuleList()
            width_out = cfg.ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks + 1):
                level.block.append(ResnetBlock(width, width_out, cfg.dropout, cfg.norm_groups))
                width = width_out
                if res in cfg.attn_resolutions:
                    level.attn.append(AttnBlock(width, cfg.norm_groups))
            if i != 0:
                level.upsample = Upsample(width)
                res *= 2
            levels.insert(0, level)  # taming indexes `up` by level (0 = full resolution)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(width, cfg.norm_groups)
        self.conv_out = nn.Conv2d(width, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h), self.exact))


class VectorQuantizer(nn.Module):
    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] of latents z [B, d, h, w]: argmin_k ||z - e_k||^2."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None, :] - 2.0 * flat @ e.t()
        return dist.argmin(dim=1).reshape(b, h, w)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents [B, d, h, w] of codes [B, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor):
        codes = self.nearest(z)
        zq = self.lookup(codes)
        codebook_loss = F.mse_loss(zq, z.detach())
        commit_loss = F.mse_loss(z, zq.detach())
        zq = z + (zq - z).detach()  # straight-through estimator
        return zq, codes, codebook_loss, commit_loss

    @torch.no_grad()
    def restart_codes(self, dead: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> int:
        """Overwrite the codes where `dead` (bool [n_embed]) is true with random rows of
        `candidates` ([N, embed_dim] encoder outputs). Returns how many codes were restarted."""
        idx = dead.nonzero().flatten()
        if idx.numel() == 0 or candidates.shape[0] == 0:
            return 0
        pick = torch.randint(0, candidates.shape[0], (idx.numel(),), generator=generator)
        self.embedding.weight[idx.to(self.embedding.weight.device)] = candidates[pick].to(self.embedding.weight)
        return int(idx.numel())


class VQOutput(NamedTuple):
    recon: torch.Tensor  # [B, 3, H, W]
    codes: torch.Tensor  # [B, h, w]
    codebook_loss: torch.Tensor  # scalar
    commit_loss: torch.Tensor  # scalar
    latents: torch.Tensor  # [B, embed_dim, h, w] pre-quantisation (for dead-code restarts)


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def set_arithmetic(self, mode: str) -> VQGAN:
        """"taming": every operation as taming-transformers computes it (plain softmax attention,
        x * sigmoid(x)), so that codes match theirs bit for bit on the same weights and device; "fast":
        fused attention and SiLU (see the module docstring for what that changes and what it saves)."""
        if mode not in ("taming", "fast"):
            raise ValueError(f"arithmetic must be 'taming' or 'fast', got {mode!r}")
        for m in self.modules():
            if hasattr(m, "exact"):
                m.exact = mode == "taming"
        return self

    def _check_pixels(self, x: torch.Tensor) -> None:
        f = self.downsample
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"expected images [B, {self.config.in_channels}, H, W] with H, W multiples of {f}, "
                             f"got {tuple(x.shape)}")

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        self._check_pixels(x)
        return self.quant_conv(self.encoder(x))

    def forward(self, x: torch.Tensor) -> VQOutput:
        z = self.latents(x)
        zq, codes, codebook_loss, commit_loss = self.quantize(z)
        recon = self.decoder(self.post_quant_conv(zq))
        return VQOutput(recon, codes, codebook_loss, commit_loss, z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [-1, 1] -> codes int64 [B, H/f, W/f]."""
        return self.quantize.nearest(self.latents(x))

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] -> images [B, 3, h*f, w*f] (about [-1, 1]; clamp before display)."""
        if codes.ndim != 3:
            raise ValueError(f"expected codes [B, h, w], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.config.n_embed):
            raise ValueError(f"codes outside the codebook [0, {self.config.n_embed})")
        return self.decoder(self.post_quant_conv(self.quantize.lookup(codes.long())))

    def encode_video(self, clips: torch.Tensor) -> torch.Tensor:
        """Clips [B, T, 3, H, W] -> codes [B, T, h, w], each frame encoded on its own."""
        if clips.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got {tuple(clips.shape)}")
        b, t = clips.shape[:2]
        codes = self.encode(clips.reshape(b * t, *clips.shape[2:]))
        return codes.reshape(b, t, *codes.shape[1:])

    def decode_video(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, T, h, w] -> clips [B, T, 3, H, W]."""
        if codes.ndim != 4:
            raise ValueError(f"expected codes [B, T, h, w], got {tuple(codes.shape)}")
        b, t = codes.shape[:2]
        frames = self.decode_codes(codes.reshape(b * t, *codes.shape[2:]))
        return frames.reshape(b, t, *frames.shape[1:])


def build_vqgan(cfg: VQGANConfig) -> VQGAN:
    return VQGAN(cfg)

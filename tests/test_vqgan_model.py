"""The VQGAN network: taming's exact parameter layout, shapes, code ranges and the arithmetic details."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model.vqgan import VQGAN, AttnBlock, Downsample, VectorQuantizer, VQGANConfig, preset

ROOT = Path(__file__).resolve().parents[1]
# The public checkpoint's names and shapes (a copy of the team's shared/formats note, kept with the
# tests so that a clean clone can run them).
FORMAT_NAME = "taming_vqgan_f16_16384_state_dict.txt"
FORMAT_CANDIDATES = [ROOT / "tests" / "data" / FORMAT_NAME]


def read_format_list(path: Path) -> tuple[dict[str, tuple[int, ...]], int, int]:
    names: dict[str, tuple[int, ...]] = {}
    n_keys = n_params = -1
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if line.startswith("n_keys"):
            _, n_keys, _, n_params = line.split()
            continue
        name, shape = line.split(" ", 1)
        names[name] = tuple(ast.literal_eval(shape))
    return names, int(n_keys), int(n_params)


def test_f16_16384_has_taming_names_and_shapes():
    found = [p for p in FORMAT_CANDIDATES if p.is_file()]
    assert found, f"taming state-dict list not found at {[str(p) for p in FORMAT_CANDIDATES]}"
    want, n_keys, n_params = read_format_list(found[0])
    assert len(want) == n_keys == 343
    model = VQGAN(preset("f16_16384"))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == n_params == 76_073_859
    assert model.downsample == 16


def test_encode_decode_shapes_and_code_range_for_images():
    torch.manual_seed(0)
    model = VQGAN(preset("tiny_f16")).eval()
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        codes = model.encode(x)
        out = model(x)
        y = model.decode_codes(codes)
    assert codes.shape == (2, 4, 6) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < model.config.n_embed
    assert y.shape == x.shape
    assert torch.equal(out.codes, codes)
    # The forward pass reconstructs from the same codes (straight-through only changes gradients).
    assert torch.allclose(out.recon, y, atol=1e-5)
    assert out.latents.shape == (2, model.config.embed_dim, 4, 6)


def test_clips_are_encoded_frame_by_frame():
    torch.manual_seed(1)
    model = VQGAN(preset("tiny_f16")).eval()
    clips = torch.rand(2, 3, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        codes = model.encode_video(clips)
        frames = model.decode_video(codes)
        one = model.encode(clips[1, 2:3])
    assert codes.shape == (2, 3, 2, 3)
    assert frames.shape == clips.shape
    assert torch.equal(codes[1, 2], one[0])
    assert 0 <= int(codes.min()) and int(codes.max()) < model.config.n_embed


def test_quantizer_picks_the_nearest_code_by_squared_l2():
    torch.manual_seed(2)
    vq = VectorQuantizer(50, 8)
    vq.embedding.weight.data.normal_()
    z = torch.randn(3, 8, 5, 4)
    codes = vq.nearest(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(1).reshape(3, 5, 4)
    assert torch.equal(codes, brute)
    zq, codes2, cb, commit = vq(z.requires_grad_())
    assert torch.equal(codes2, codes)
    assert torch.allclose(zq, vq.lookup(codes), atol=1e-6)
    assert torch.allclose(cb, commit) and cb > 0
    zq.sum().backward()  # straight-through: the gradient reaches the encoder side unchanged
    assert torch.allclose(z.grad, torch.ones_like(z))


def test_attention_matches_taming_bmm_softmax_formula():
    torch.manual_seed(3)
    blk = AttnBlock(32)
    x = torch.randn(2, 32, 3, 5)
    h = blk.norm(x)
    q, k, v = blk.q(h), blk.k(h), blk.v(h)
    b, c, hh, ww = q.shape
    w_ = torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * (c ** -0.5)
    w_ = F.softmax(w_, dim=2)
    ref = torch.bmm(v.reshape(b, c, -1), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
    ref = x + blk.proj_out(ref)
    assert torch.equal(blk(x), ref)  # taming's arithmetic (the default): bit for bit
    blk.exact = False
    assert torch.allclose(blk(x), ref, atol=1e-5)  # fused attention: the same maths, other rounding


def taming_encoder(model: VQGAN, x: torch.Tensor) -> torch.Tensor:
    """Pre-quantisation latents as taming-transformers' Encoder + quant_conv compute them, op by op, from the
    model's weights: GroupNorm, x * sigmoid(x), 1x1-conv attention through bmm / scale / softmax / bmm with
    the weights transposed, (0, 1, 0, 1) padding before each stride-2 conv."""
    def norm(n, h):
        return F.group_norm(h, n.num_groups, n.weight, n.bias, n.eps)

    def nonlinearity(h):
        return h * torch.sigmoid(h)

    def resnet(blk, h):
        out = blk.conv1(nonlinearity(norm(blk.norm1, h)))
        out = blk.conv2(nonlinearity(norm(blk.norm2, out)))
        return (blk.nin_shortcut(h) if hasattr(blk, "nin_shortcut") else h) + out

    def attention(blk, h):
        y = norm(blk.norm, h)
        q, k, v = blk.q(y), blk.k(y), blk.v(y)
        b, c, hh, ww = q.shape
        w_ = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww))
        w_ = torch.nn.functional.softmax(w_ * (int(c) ** (-0.5)), dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return h + blk.proj_out(out)

    enc = model.encoder
    h = enc.conv_in(x)
    for level in enc.down:
        for j, blk in enumerate(level.block):
            h = resnet(blk, h)
            if len(level.attn):
                h = attention(level.attn[j], h)
        if hasattr(level, "downsample"):
            h = level.downsample.conv(F.pad(h, (0, 1, 0, 1), mode="constant", value=0))
    h = resnet(enc.mid.block_2, attention(enc.mid.attn_1, resnet(enc.mid.block_1, h)))
    return model.quant_conv(enc.conv_out(nonlinearity(norm(enc.norm_out, h))))


def test_the_encoder_computes_exactly_as_taming_does():
    """Codes must match taming's where they are exchanged (a token set, an extension's input), so by default
    every operation is taming's; the fused "fast" arithmetic rounds differently (measured on f16/16384 in
    model/vqgan.py's docstring)."""
    torch.manual_seed(0)
    model = VQGAN(preset("tiny_f16")).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = taming_encoder(model, x)
        assert torch.equal(model.latents(x), ref)
        assert torch.equal(model.encode(x), model.quantize.nearest(ref))
        fast = model.set_arithmetic("fast").latents(x)
    assert torch.allclose(fast, ref, atol=1e-5) and not torch.equal(fast, ref)
    with pytest.raises(ValueError, match="'taming' or 'fast'"):
        model.set_arithmetic("exact")


def test_downsample_pads_right_and_bottom_only():
    down = Downsample(32)
    down.conv.weight.data.zero_()
    down.conv.bias.data.zero_()
    for c in range(32):
        down.conv.weight.data[c, c, 0, 0] = 1.0  # picks the kernel's top-left input
    x = torch.randn(1, 32, 6, 8)
    out = down(x)
    assert out.shape == (1, 32, 3, 4)
    assert torch.equal(out, x[..., ::2, ::2])  # symmetric padding would shift this by one pixel


def test_restart_codes_replaces_only_dead_codes():
    vq = VectorQuantizer(6, 4)
    before = vq.embedding.weight.detach().clone()
    dead = torch.tensor([False, True, False, False, True, False])
    cands = torch.arange(12.0).reshape(3, 4) + 100
    n = vq.restart_codes(dead, cands, torch.Generator().manual_seed(0))
    after = vq.embedding.weight.detach()
    assert n == 2
    assert torch.equal(after[~dead], before[~dead])
    for row in after[dead]:
        assert any(torch.equal(row, c) for c in cands)


def test_invalid_inputs_and_configs_are_refused():
    model = VQGAN(preset("tiny_f16"))
    with pytest.raises(ValueError, match="multiples of 16"):
        model.encode(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="outside the codebook"):
        model.decode_codes(torch.full((1, 2, 2), 64))
    with pytest.raises(ValueError, match="multiple of norm_groups"):
        VQGANConfig(ch=48, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="unknown VQGAN preset"):
        preset("f32_huge")
    cfg = preset("tiny_f8")
    assert cfg.downsample == 8 and VQGANConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown VQGANConfig keys"):
        VQGANConfig.from_dict({**cfg.to_dict(), "double_z": False})

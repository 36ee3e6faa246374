"""Attention, relative position bias and the rendering block (paper eq. 5).

    z_self  = SA(LN(q <- z, k <- [z, c] + b, v <- [z, c])) + z
    z_cross = CA(LN(q <- z_self, k <- y, v <- y)) + z_self
    z       = MLP(LN(z_cross)) + z_cross

`c` are the stored layer inputs of the context patches (model.pool), `b` the learnable bias of
each key's patch offset. Pre-RPE (the paper's default) adds a learnable D-vector per offset to
the keys before attention; Post-RPE adds a learnable per-head scalar to the attention logits.
The patch's own keys use offset (0, 0, 0), so the table receives a gradient on every step, the
first patch (empty pool) included, as ZeRO requires.

Attention runs through `F.scaled_dot_product_attention`. Keys are ordered [context, own]: the
own part is causal for AR and full for NAR / P-NAR; every query sees the whole context.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from model.config import RenderConfig
from model.pool import num_offsets, offset_index


class Attention(nn.Module):
    """Multi-head attention with separate query and key/value projections."""

    def __init__(self, d_model: int, n_head: int, dropout: float = 0.0):
        super().__init__()
        self.n_head, self.d_head = n_head, d_model // n_head
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.n_head, self.d_head).transpose(1, 2)

    def keys_values(self, src: torch.Tensor, key_add: torch.Tensor | None = None):
        """Project src [B, S, D] to per-head keys and values; key_add ([S, D] or [D]) is Pre-RPE."""
        k, v = self.kv(src).chunk(2, dim=-1)
        if key_add is not None:
            k = k + key_add
        return self.heads(k), self.heads(v)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads(self.q(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, -1))


class ContextSelfAttention(nn.Module):
    """Self-attention of a patch over [context states, its own tokens] with the patch-offset bias."""

    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.dropout)
        self.post = cfg.rpe == "post"
        width = cfg.n_head if self.post else cfg.d_model
        self.table = nn.Parameter(torch.zeros(num_offsets(cfg.expand), width))
        nn.init.trunc_normal_(self.table, std=0.02)
        self.center = offset_index((0, 0, 0), cfg.expand)

    def context_kv(self, ctx: torch.Tensor | None, offsets: torch.Tensor) -> tuple | None:
        """Keys/values (and Post-RPE logit bias) of the normalised context; computed once per patch."""
        if ctx is None:
            return None
        if self.post:
            k, v = self.attn.keys_values(ctx)
            return k, v, self.table[offsets].t()  # bias [h, S]
        k, v = self.attn.keys_values(ctx, self.table[offsets])
        return k, v, None

    def forward(self, x: torch.Tensor, ctx_kv: tuple | None, causal: bool, cache: dict | None = None):
        k, v = self.attn.keys_values(x, None if self.post else self.table[self.center])
        if cache is not None:
            return self._decode_step(x, k, v, ctx_kv, causal, cache)
        n_ctx = 0 if ctx_kv is None else ctx_kv[0].shape[2]
        if ctx_kv is not None:
            k, v = torch.cat([ctx_kv[0], k], dim=2), torch.cat([ctx_kv[1], v], dim=2)
        bias = None if not self.post else self._post_bias(ctx_kv, k.shape[2] - n_ctx)
        return self.attn.attend(x, k, v, self._mask(x, n_ctx, k.shape[2] - n_ctx, 0, causal, bias))

    def _post_bias(self, ctx_kv, n_own: int) -> torch.Tensor:
        """Post-RPE logit bias per key, [h, 1, keys]: context offsets, then (0, 0, 0) for own keys."""
        own = self.table[self.center][:, None, None].expand(-1, 1, n_own)
        return own if ctx_kv is None else torch.cat([ctx_kv[2][:, None, :], own], dim=-1)

    @staticmethod
    def _mask(x, n_ctx: int, n_own: int, past: int, causal: bool, bias: torch.Tensor | None):
        """Additive mask [1 or h, queries, keys]: causal over own keys (queries start at `past`)."""
        n_q = x.shape[1]
        if bias is None and not (causal and n_q > 1):
            return None
        mask = x.new_zeros(1, n_q, n_ctx + n_own)
        if causal and n_q > 1:
            q_pos = torch.arange(n_q, device=x.device)[:, None] + past
            k_pos = torch.arange(n_own, device=x.device)[None, :]
            mask[..., n_ctx:] = mask[..., n_ctx:].masked_fill(k_pos > q_pos, float("-inf"))
        return mask if bias is None else mask + bias

    def _decode_step(self, x, k, v, ctx_kv, causal: bool, cache: dict):
        """AR decoding: keys/values live in one buffer per patch, [context | own tokens so far].

        The context part is written once; each step writes its own keys in place, so no step
        copies the context again (a concatenation per token would, and dominates the step).
        """
        n_ctx = 0 if ctx_kv is None else ctx_kv[0].shape[2]
        if "k_buf" not in cache:
            b, h, _, dh = k.shape
            length = n_ctx + cache.get("max_len", k.shape[2])
            cache["k_buf"], cache["v_buf"] = k.new_empty(b, h, length, dh), v.new_empty(b, h, length, dh)
            if n_ctx:
                cache["k_buf"][:, :, :n_ctx] = ctx_kv[0]
                cache["v_buf"][:, :, :n_ctx] = ctx_kv[1]
            cache["fill"] = n_ctx
            if self.post:
                cache["bias"] = self._post_bias(ctx_kv, length - n_ctx)
        start, n = cache["fill"], k.shape[2]
        if start + n > cache["k_buf"].shape[2]:
            raise ValueError(f"decoding past the cache length {cache['k_buf'].shape[2] - n_ctx} of this patch")
        cache["k_buf"][:, :, start:start + n] = k
        cache["v_buf"][:, :, start:start + n] = v
        cache["fill"] = end = start + n
        bias = cache["bias"][..., :end] if self.post else None
        mask = self._mask(x, n_ctx, end - n_ctx, start - n_ctx, causal, bias)
        return self.attn.attend(x, cache["k_buf"][:, :, :end], cache["v_buf"][:, :, :end], mask)


class CrossAttention(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.dropout)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, cache: dict | None = None):
        if cache is not None and "text_kv" in cache:
            k, v = cache["text_kv"]
        else:
            k, v = self.attn.keys_values(text)
            if cache is not None:
                cache["text_kv"] = (k, v)
        mask = text_mask[:, None, None, :]  # [B, 1, 1, Lt], True = attend
        return self.attn.attend(x, k, v, mask)


class MLP(nn.Module):
    def __init__(self, d_model: int, ratio: float, dropout: float = 0.0):
        super().__init__()
        hidden = int(d_model * ratio)
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(x))))


class RenderBlock(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.ln_self = nn.LayerNorm(cfg.d_model)
        self.self_attn = ContextSelfAttention(cfg)
        self.cross = CrossAttention(cfg) if cfg.has_text else None
        self.ln_cross = nn.LayerNorm(cfg.d_model) if cfg.has_text else None
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.dropout)
        self.use_checkpoint = cfg.checkpoint_blocks

    def forward(self, x, ctx, offsets, text, text_mask, causal: bool, cache: dict | None = None):
        if self.use_checkpoint and self.training and cache is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, ctx, offsets, text, text_mask, causal, None, use_reentrant=False)
        return self._forward(x, ctx, offsets, text, text_mask, causal, cache)

    def _forward(self, x, ctx, offsets, text, text_mask, causal, cache):
        if cache is not None and "ctx_kv" in cache:
            ctx_kv = cache["ctx_kv"]
        else:
            ctx_kv = self.self_attn.context_kv(None if ctx is None else self.ln_self(ctx), offsets)
            if cache is not None:
                cache["ctx_kv"] = ctx_kv
        x = x + self.self_attn(self.ln_self(x), ctx_kv, causal, cache)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), text, text_mask, cache)
        return x + self.mlp(self.ln_mlp(x))


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: normal(0, 0.02) linears and embeddings, zero biases, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled_residual_init(blocks: nn.ModuleList, n_layer: int) -> None:
    """GPT-2's 1/sqrt(2L) scaling of the residual projections, for stable deep stacks."""
    std = 0.02 / math.sqrt(2 * n_layer)
    for b in blocks:
        nn.init.normal_(b.self_attn.attn.out.weight, std=std)
        nn.init.normal_(b.mlp.proj.weight, std=std)
        if b.cross is not None:
            nn.init.normal_(b.cross.attn.out.weight, std=std)

"""Attention, relative position bias and the rendering block (paper eq. 5).

    z_self  = SA(LN(q <- z, k <- [z, c] + b, v <- [z, c])) + z
    z_cross = CA(LN(q <- z_self, k <- y, v <- y)) + z_self
    z       = MLP(LN(z_cross)) + z_cross

`c` are the stored layer inputs of the context patches (model.pool), `b` the learnable bias of
each key's patch offset. Pre-RPE (the paper's default) adds a learnable D-vector per offset to
the keys before attention; Post-RPE adds a learnable per-head scalar to the attention logits.
The patch's own keys use offset (0, 0, 0), so the table receives a gradient on every step, the
first patch (empty pool) included, as ZeRO requires.

Attention runs through `F.scaled_dot_product_attention` on its fused kernels (`context_attention`).
Keys are ordered [context, own]: every query sees the whole context, and the own part is causal for
AR (a lower-right causal mask) and full for NAR / P-NAR. No [queries x keys] tensor is built per layer:
on CUDA the mask is `causal_lower_right`, which the flash and memory-efficient kernels apply inside;
the CPU kernel has no lower-right causal mode, so there one additive mask per shape is built once and
shared by every layer and step. Post-RPE's per-(head, key) logit bias is folded into the keys (one
more head dimension), so it needs no mask either, and its gradient flows through the keys.

AR sampling does not call `forward` per token: `prefill` computes a patch's context (and caption)
keys and values once, and `decode` runs one token against them with shapes fixed for the whole
patch (model.decoding compiles that step or captures it as a CUDA graph).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.utils.checkpoint import checkpoint

from model.config import RenderConfig
from model.pool import num_offsets, offset_index

# Fused kernels take head dimensions that are multiples of 8 (flash on CUDA and the CPU kernel).
HEAD_DIM_ALIGN = 8


@functools.lru_cache(maxsize=8)
def _cpu_lower_right_mask(n_q: int, n_k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive [n_q, n_k] mask: query i sees keys 0 .. n_k - n_q + i (all context, causal own keys).
    Built once per shape: the CPU kernel has no lower-right causal mode."""
    later = torch.ones(n_q, n_k, dtype=torch.bool, device=device).triu(n_k - n_q + 1)
    return torch.zeros(n_q, n_k, dtype=dtype, device=device).masked_fill_(later, float("-inf"))


def context_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                      key_bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + key_bias + causal mask) v on SDPA's fused kernels.

    q [B, h, Tq, d]; k, v [B, h, S + Tq, d] with the keys ordered [context, own]; `causal`: query i
    sees the whole context and own keys 0 .. i (the causal mask aligned to the lower right);
    key_bias [h, S + Tq] (Post-RPE) is added to every query's logits of that head and key.
    """
    n_q, n_k, d = q.shape[2], k.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(d)
    if key_bias is not None:
        # A per-(head, key) bias is a rank-one logit term: a query column of ones against a key column
        # of bias / scale adds exactly `bias` to q k^T * scale. Zero columns pad the head to the
        # kernels' alignment (value too: the CPU kernel wants equal head sizes); the output drops them.
        pad = -(d + 1) % HEAD_DIM_ALIGN
        b, h = q.shape[0], q.shape[1]
        q = torch.cat([q, q.new_ones(b, h, n_q, 1), q.new_zeros(b, h, n_q, pad)], dim=-1)
        col = (key_bias / scale).to(k.dtype)[None, :, :, None].expand(b, h, n_k, 1)
        k = torch.cat([k, col, k.new_zeros(b, h, n_k, pad)], dim=-1)
        v = F.pad(v, (0, pad + 1))
    mask = None
    if causal and n_q > 1:
        if q.device.type == "cuda":
            mask = causal_lower_right(n_q, n_k)
        else:
            mask = _cpu_lower_right_mask(n_q, n_k, q.dtype, q.device)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return y[..., :d] if key_bias is not None else y


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

    def dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads(self.q(x))
        return self.merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout_p()))

    def merge(self, y: torch.Tensor) -> torch.Tensor:
        """Per-head outputs [B, h, n, d] through the output projection."""
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

    # The additive-mask formulation used before the fused path (a [queries x keys] mask per layer,
    # [heads x queries x keys] with Post-RPE). Kept, switched on only by `pipeline.bench attention`,
    # which times it against the fused path in the same run.
    masked_reference = False

    def forward(self, x: torch.Tensor, ctx_kv: tuple | None, causal: bool):
        k, v = self.attn.keys_values(x, self._own_key_add())
        n_ctx = 0 if ctx_kv is None else ctx_kv[0].shape[2]
        if ctx_kv is not None:
            k, v = torch.cat([ctx_kv[0], k], dim=2), torch.cat([ctx_kv[1], v], dim=2)
        n_own = k.shape[2] - n_ctx
        if self.masked_reference:
            bias = None if not self.post else self._post_bias(ctx_kv, n_own)
            return self.attn.attend(x, k, v, self._mask(x, n_ctx, n_own, causal, bias))
        key_bias = self._post_bias(ctx_kv, n_own)[:, 0] if self.post else None
        q = self.attn.heads(self.attn.q(x))
        return self.attn.merge(context_attention(q, k, v, causal, key_bias, self.attn.dropout_p()))

    def _own_key_add(self) -> torch.Tensor | None:
        """Pre-RPE: the patch's own keys carry the bias of offset (0, 0, 0)."""
        return None if self.post else self.table[self.center]

    def _post_bias(self, ctx_kv, n_own: int) -> torch.Tensor:
        """Post-RPE logit bias per key, [h, 1, keys]: context offsets, then (0, 0, 0) for own keys."""
        own = self.table[self.center][:, None, None].expand(-1, 1, n_own)
        return own if ctx_kv is None else torch.cat([ctx_kv[2][:, None, :], own], dim=-1)

    @staticmethod
    def _mask(x, n_ctx: int, n_own: int, causal: bool, bias: torch.Tensor | None):
        """Additive mask [1 or h, queries, keys]: causal over own keys (the masked reference only)."""
        n_q = x.shape[1]
        if bias is None and not (causal and n_q > 1):
            return None
        mask = x.new_zeros(1, n_q, n_ctx + n_own)
        if causal and n_q > 1:
            later = torch.ones(n_q, n_own, dtype=torch.bool, device=x.device).triu(1)
            mask[..., n_ctx:] = mask[..., n_ctx:].masked_fill(later, float("-inf"))
        return mask if bias is None else mask + bias

    # ------------------------------------------------------------------ AR decoding
    def prefill(self, ctx_kv: tuple | None, rows: int, own_len: int, like: torch.Tensor) -> dict:
        """The key/value cache of one patch: one buffer per projection, [context | own_len slots].

        The context part is written once here; each decode step writes its own keys in place.
        Every step then sees tensors of the same shapes (the whole buffer, with the slots not yet
        written masked out), so a step can be compiled once or captured as a CUDA graph.
        """
        h, dh = self.attn.n_head, self.attn.d_head
        n_ctx = 0 if ctx_kv is None else ctx_kv[0].shape[2]
        length = n_ctx + own_len
        # Zeros, not empty: a masked slot still enters the product with its weight 0, and 0 * NaN is NaN.
        k_buf = like.new_zeros(rows, h, length, dh)
        v_buf = like.new_zeros(rows, h, length, dh)
        if n_ctx:
            k_buf[:, :, :n_ctx] = ctx_kv[0]
            v_buf[:, :, :n_ctx] = ctx_kv[1]
        # The additive mask of the next step: context keys open, own slots closed (-inf) until written.
        # Post-RPE: the per-head bias of each key's offset, the own slots' (0, 0, 0) bias set on write.
        if self.post:
            mask = self._post_bias(ctx_kv, own_len).clone()
            own_bias = self.table[self.center][:, None, None]  # [h, 1, 1]
        else:
            mask = like.new_zeros(1, length)
            own_bias = like.new_zeros(1, 1)
        mask[..., n_ctx:] = float("-inf")
        return {"k": k_buf, "v": v_buf, "mask": mask, "own_bias": own_bias}

    def decode(self, x: torch.Tensor, cache: dict, slot: torch.Tensor) -> torch.Tensor:
        """One token x [B, 1, D] whose keys go to buffer index `slot` (a [1] tensor: context length +
        own position, so no value is baked into the step).

        Writes the token's key, value and mask entry into its slot in place (slots after it stay
        closed), so that steps are identical in shape and can be replayed."""
        if x.shape[1] != 1:
            raise ValueError(f"the decode step takes one token at a time, got {x.shape[1]}")
        k, v = self.attn.keys_values(x, self._own_key_add())
        cache["k"].index_copy_(2, slot, k)
        cache["v"].index_copy_(2, slot, v)
        cache["mask"].index_copy_(-1, slot, cache["own_bias"])
        return self.attn.attend(x, cache["k"], cache["v"], cache["mask"])


class CrossAttention(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.dropout)

    def forward(self, x: torch.Tensor, text_kv: tuple, text_mask: torch.Tensor):
        """text_kv: the caption's keys and values (`attn.keys_values`); text_mask [B, Lt], True = attend."""
        return self.attn.attend(x, *text_kv, text_mask[:, None, None, :])


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

    def forward(self, x, ctx, offsets, text, text_mask, causal: bool):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, ctx, offsets, text, text_mask, causal, use_reentrant=False)
        return self._forward(x, ctx, offsets, text, text_mask, causal)

    def _context_kv(self, ctx, offsets):
        return self.self_attn.context_kv(None if ctx is None else self.ln_self(ctx), offsets)

    def _forward(self, x, ctx, offsets, text, text_mask, causal):
        ctx_kv = self._context_kv(ctx, offsets)
        text_kv = None if self.cross is None else self.cross.attn.keys_values(text)
        return self._residuals(x, lambda y: self.self_attn(y, ctx_kv, causal), text_kv, text_mask)

    def _residuals(self, x, self_attend, text_kv, text_mask):
        """The block's three residual branches (eq. 5); `self_attend` maps LN(x) to its self-attention."""
        x = x + self_attend(self.ln_self(x))
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), text_kv, text_mask)
        return x + self.mlp(self.ln_mlp(x))

    # ------------------------------------------------------------------ AR decoding
    def prefill(self, ctx, offsets, text, text_mask, rows: int, own_len: int, like: torch.Tensor) -> dict:
        """This block's decode cache for one patch: context and caption keys/values, computed once."""
        cache = self.self_attn.prefill(self._context_kv(ctx, offsets), rows, own_len, like)
        if self.cross is not None:
            cache["text_kv"], cache["text_mask"] = self.cross.attn.keys_values(text), text_mask
        return cache

    def decode(self, x: torch.Tensor, cache: dict, slot: torch.Tensor) -> torch.Tensor:
        return self._residuals(x, lambda y: self.self_attn.decode(y, cache, slot), cache.get("text_kv"),
                               cache.get("text_mask"))


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

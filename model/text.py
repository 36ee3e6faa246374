"""Text encoder: caption token ids -> features every rendering block cross-attends to.

Ids come from the pipeline's offline tokenizer (trained from the captions, pad id 0); nothing
here downloads anything. A learned "null" token is always prepended and always visible, so a
caption dropped for classifier-free guidance (its mask all False) still gives the attention a
key, and the unconditional branch is simply "attend to the null token".
"""

from __future__ import annotations

import torch
import torch.nn as nn

from model.blocks import MLP, Attention
from model.config import RenderConfig


class TextLayer(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_head, cfg.dropout)
        self.ln_mlp = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, cfg.mlp_ratio, cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_attn(x)
        k, v = self.attn.keys_values(h)
        x = x + self.attn.attend(h, k, v, key_mask[:, None, None, :])
        return x + self.mlp(self.ln_mlp(x))


class TextEncoder(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.max_len = cfg.text_len
        self.embed = nn.Embedding(cfg.text_vocab_size, cfg.d_model)
        self.null = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        self.pos = nn.Parameter(torch.zeros(cfg.text_len + 1, cfg.d_model))
        self.layers = nn.ModuleList(TextLayer(cfg) for _ in range(cfg.text_layers))
        self.ln = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.null, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, Lt] -> features [B, Lt + 1, D] and key mask [B, Lt + 1] (null token first)."""
        if ids.shape != mask.shape or ids.dim() != 2:
            raise ValueError(f"text ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must both be [B, Lt]")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"caption of {ids.shape[1]} tokens exceeds text_len {self.max_len}")
        b, n = ids.shape
        x = torch.cat([self.null.expand(b, -1, -1), self.embed(ids)], dim=1) + self.pos[: n + 1]
        key_mask = torch.cat([mask.new_ones(b, 1), mask.bool()], dim=1)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.ln(x), key_mask

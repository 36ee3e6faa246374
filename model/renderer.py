"""The rendering model P(p_i | c_i, y) (paper section 3.2): AR, NAR and P-NAR share one body.

Every renderer takes the patch's real tokens [B, T] (T = h_p * w_p * f_p, flattened (f, h, w)),
the patch's Context from the pool and optional caption ids, and returns the patch loss and the
states to store: for each layer l, the layer's input z^{l-1} at the patch's T real tokens
(never the BOS), detached. Later patches attend to these (eq. 5).

- AR: input [BOS, s_1 .. s_T], causal inside the patch, position t predicts s_{t+1}; the states
  come straight from the loss pass (positions 1..T). Sampling uses a key/value cache: context
  keys/values are projected once per patch into a buffer with a slot for every own token, which
  each step fills in place (`decode_step`; model.decoding runs it eagerly, compiled or as a CUDA
  graph).
- NAR: input is positions only (a learned query vector + axial position); a second pass over
  the real tokens (no grad) makes the states to store. Its token embedding is tied to the
  output head, otherwise nothing would ever train it (config.py).
- P-NAR (MaskGIT): a cosine-scheduled share of the tokens is replaced by a mask embedding and
  the loss is over the masked ones; sampling starts fully masked and, over a fixed number of
  steps, keeps the most confident predictions and re-masks the rest (cosine schedule), with
  Gumbel noise on the confidences annealed from `temperature` to `pnar_temperature_end`. The
  states come from a pass over the real tokens, as for NAR.

Direction: every call takes the generation direction (`model.directions.Direction` or its
name; None means down-right-forward). With `direction_embedding` on, its learnable vector is
added to every input token, so the model knows which corner an empty pool means (config.py).

With context transfer off (Table 4d) the stored states are computed with an empty context.
Every parameter takes part in every training forward, so each receives a gradient on every
patch step, the first (empty pool) included: ZeRO stages 1-3 need this.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.blocks import RenderBlock, init_weights, scaled_residual_init
from model.config import RenderConfig, SamplingConfig
from model.decoding import decode_stepper
from model.directions import DEFAULT_DIRECTION, NUM_DIRECTIONS, Direction
from model.pool import Context
from model.sampling import guide, sample_logits
from model.text import TextEncoder


class RenderOutput(NamedTuple):
    """A NamedTuple, not a dataclass: DeepSpeed ZeRO-3 finds the tensors a module returns (to
    re-gather its parameters for backward) only inside tuples, lists and dicts."""

    loss: torch.Tensor  # mean cross-entropy (nats) over the predicted tokens
    logits: torch.Tensor  # [B, T, V]
    states: list[torch.Tensor]  # per layer [B, T, D], detached
    num_predicted: int | torch.Tensor  # P-NAR: a device tensor (reading it would wait for the device)


class Renderer(nn.Module):
    def __init__(self, cfg: RenderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        hp, wp, fp = cfg.patch
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        # Learnable axial absolute positions inside a patch (row, column, frame).
        self.pos_row = nn.Parameter(torch.zeros(hp, d))
        self.pos_col = nn.Parameter(torch.zeros(wp, d))
        self.pos_frame = nn.Parameter(torch.zeros(fp, d))
        if cfg.renderer == "ar":
            self.bos = nn.Parameter(torch.zeros(d))
        elif cfg.renderer == "nar":
            self.query = nn.Parameter(torch.zeros(d))
        else:
            self.mask_emb = nn.Parameter(torch.zeros(d))
        # A plain parameter of this module (not an nn.Embedding) so that ZeRO-3 gathers it with the
        # other top-level parameters whenever forward runs.
        self.dir_emb = nn.Parameter(torch.zeros(NUM_DIRECTIONS, d)) if cfg.direction_embedding else None
        self.text = TextEncoder(cfg) if cfg.has_text else None
        self.blocks = nn.ModuleList(RenderBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        init_weights(self)
        scaled_residual_init(self.blocks, cfg.n_layer)
        for p in (self.pos_row, self.pos_col, self.pos_frame):
            nn.init.normal_(p, std=0.02)
        for name in ("bos", "query", "mask_emb", "dir_emb"):
            if getattr(self, name, None) is not None:
                nn.init.normal_(getattr(self, name), std=0.02)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    # ----------------------------------------------------------------- pieces
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields tied weights once

    def positions(self) -> torch.Tensor:
        """[T, D] axial positions in (f, h, w) order."""
        pos = self.pos_frame[:, None, None] + self.pos_row[None, :, None] + self.pos_col[None, None, :]
        return pos.reshape(-1, self.cfg.d_model)

    def encode_text(self, ids: torch.Tensor | None, mask: torch.Tensor | None, rows: int, device):
        if self.text is None:
            if ids is not None:
                raise ValueError("this model was built without text (text_vocab_size = 0) but got caption ids")
            return None
        if ids is None:  # no caption at all: the unconditional branch (null token only)
            ids = torch.zeros(rows, 1, dtype=torch.long, device=device)
            mask = torch.zeros(rows, 1, dtype=torch.bool, device=device)
        if mask is None:
            mask = ids != 0
        if ids.shape[0] != rows:
            raise ValueError(f"caption batch of {ids.shape[0]} rows for a patch batch of {rows}")
        return self.text(ids, mask)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        t = self.cfg.tokens_per_patch
        if tokens.dim() != 2 or tokens.shape[1] != t:
            raise ValueError(f"a patch is [B, {t}] tokens for patch size {self.cfg.patch}, got {tuple(tokens.shape)}")

    def direction_vector(self, direction: Direction | str | None) -> torch.Tensor | None:
        """The learnable vector of a generation direction, [D] (None without direction_embedding)."""
        if self.dir_emb is None:
            return None
        return self.dir_emb[Direction.parse(direction or DEFAULT_DIRECTION).index]

    def _run(self, x: torch.Tensor, ctx: Context, text, causal: bool, dvec: torch.Tensor | None = None):
        """Run the blocks; returns the final hidden states and every block's input.

        `dvec` is the direction vector, looked up once per patch by the public entry points."""
        feats, key_mask = text if text is not None else (None, None)
        if dvec is not None:
            x = x + dvec
        inputs = []
        for l, block in enumerate(self.blocks):
            inputs.append(x)
            c = None if ctx.states is None else ctx.states[l]
            x = block(x, c, ctx.offsets, feats, key_mask, causal)
        return x, inputs

    def _prefill(self, ctx: Context, text, rows: int) -> list[dict]:
        """Per-block AR decode caches of one patch: the BOS and every token get a slot."""
        feats, key_mask = text if text is not None else (None, None)
        like = self.tok_emb.weight
        return [block.prefill(None if ctx.states is None else ctx.states[l], ctx.offsets, feats, key_mask, rows,
                              self.cfg.tokens_per_patch + 1, like)
                for l, block in enumerate(self.blocks)]

    def decode_step(self, x: torch.Tensor, slot: torch.Tensor, caches: list[dict],
                    dvec: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One AR token x [B, 1, D] through every block; `slot` ([1] tensor) is its index in the key
        buffers, the same in every block: context length + own position (0 is the BOS).

        Returns the logits [B, V] for the next token and the block inputs [L, B, D] (the states of
        this token). Shapes never change within a patch and nothing is read back to the host, so
        this is the function `model.decoding` compiles or captures as a CUDA graph."""
        if dvec is not None:
            x = x + dvec
        inputs = []
        for block, cache in zip(self.blocks, caches):
            inputs.append(x[:, 0])
            x = block.decode(x, cache, slot)
        return self._logits(x[:, 0]), torch.stack(inputs)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln_f(h))

    def _token_input(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(tokens) + self.positions()

    def _bos(self, rows: int) -> torch.Tensor:
        return self.bos.expand(rows, 1, -1)

    def _state_context(self, ctx: Context) -> Context:
        return ctx if self.cfg.context_transfer else Context.empty(ctx.offsets.device)

    @torch.no_grad()
    def _states(self, tokens: torch.Tensor, ctx: Context, text, dvec=None) -> list[torch.Tensor]:
        """The layer inputs at the real tokens, from a pass over the real tokens."""
        ctx = self._state_context(ctx)
        if self.cfg.renderer == "ar":
            x = torch.cat([self._bos(tokens.shape[0]), self._token_input(tokens)], dim=1)
            _, inputs = self._run(x, ctx, text, causal=True, dvec=dvec)
            return [z[:, 1:].detach() for z in inputs]
        _, inputs = self._run(self._token_input(tokens), ctx, text, causal=False, dvec=dvec)
        return [z.detach() for z in inputs]

    def draw_mask(self, rows: int, generator: torch.Generator | None, device) -> torch.Tensor:
        """MaskGIT training mask: ratio cos(pi/2 * u), u ~ U(0, 1); at least one token masked."""
        t = self.cfg.tokens_per_patch
        u = torch.rand(rows, generator=generator)
        n = torch.ceil(torch.cos(0.5 * math.pi * u) * t).clamp(1, t).long()
        ranks = torch.rand(rows, t, generator=generator).argsort(dim=1).argsort(dim=1)
        # Drawn on the host (its generator is the trainer's, for exact resumes); a non-blocking copy does
        # not make the host wait for the device's queue.
        return (ranks < n[:, None]).to(device, non_blocking=True)

    # --------------------------------------------------------------- training
    def forward(self, tokens: torch.Tensor, context: Context, text_ids: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                direction: Direction | str | None = None) -> RenderOutput:
        self._check_tokens(tokens)
        rows, t = tokens.shape
        text = self.encode_text(text_ids, text_mask, rows, tokens.device)
        dvec = self.direction_vector(direction)
        kind = self.cfg.renderer
        if kind == "ar":
            x = torch.cat([self._bos(rows), self._token_input(tokens)], dim=1)
            h, inputs = self._run(x, context, text, causal=True, dvec=dvec)
            logits = self._logits(h[:, :t])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
            if self.cfg.context_transfer:
                states = [z[:, 1:].detach() for z in inputs]
            else:
                states = self._states(tokens, context, text, dvec)
            return RenderOutput(loss, logits, states, rows * t)
        if kind == "nar":
            x = (self.query + self.positions()).expand(rows, -1, -1)
            h, _ = self._run(x, context, text, causal=False, dvec=dvec)
            logits = self._logits(h)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))
            return RenderOutput(loss, logits, self._states(tokens, context, text, dvec), rows * t)
        mask = self.draw_mask(rows, generator, tokens.device)
        x = torch.where(mask[..., None], self.mask_emb, self.tok_emb(tokens)) + self.positions()
        h, _ = self._run(x, context, text, causal=False, dvec=dvec)
        logits = self._logits(h)
        loss = F.cross_entropy(logits[mask].float(), tokens[mask])
        return RenderOutput(loss, logits, self._states(tokens, context, text, dvec), mask.sum())

    # --------------------------------------------------------------- sampling
    @torch.no_grad()
    def states_for(self, tokens: torch.Tensor, context: Context, text_ids: torch.Tensor | None = None,
                   text_mask: torch.Tensor | None = None,
                   direction: Direction | str | None = None) -> list[torch.Tensor]:
        """Teacher-forced states of given tokens (to prime the pool from an existing image)."""
        self._check_tokens(tokens)
        text = self.encode_text(text_ids, text_mask, tokens.shape[0], tokens.device)
        return self._states(tokens, context, text, self.direction_vector(direction))

    @torch.no_grad()
    def render(self, context: Context, text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
               sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
               batch: int | None = None, trace: list | None = None,
               use_cache: bool = True,
               direction: Direction | str | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Draw one patch. Returns tokens [B, T] and the states to store ([rows, T, D] per layer).

        With sampling.cfg_scale != 1 the rows are [cond; uncond] (2B), the context and captions
        must have 2B rows, and the same tokens are fed to both halves. `batch` gives B when
        neither the context nor the captions say it. `trace`, when a list, receives per-step
        details (AR: the guided logits of each token; P-NAR: the masked count after each step).
        `use_cache=False` makes AR re-run the context and the whole prefix for every token (the
        taming-style sliding window; for checking and benchmarking the cache only).
        """
        s = sampling or SamplingConfig()
        rows = self._rows(context, text_ids, batch, s.cfg_scale)
        device = self.tok_emb.weight.device
        text = self.encode_text(text_ids, text_mask, rows, device)
        dvec = self.direction_vector(direction)
        if self.cfg.renderer == "ar":
            tokens, states = self._render_ar(context, text, s, generator, rows, trace, use_cache, dvec)
        elif self.cfg.renderer == "nar":
            x = (self.query + self.positions()).expand(rows, -1, -1)
            h, _ = self._run(x, context, text, causal=False, dvec=dvec)
            logits = guide(self._logits(h), s.cfg_scale)
            tokens = sample_logits(logits, s.temperature, s.top_k, s.top_p, generator)
            states = None
        else:
            tokens = self._render_pnar(context, text, s, generator, rows, trace, dvec)
            states = None
        if states is None or not self.cfg.context_transfer:
            states = self._states(self._both(tokens, s.cfg_scale), context, text, dvec)
        return tokens, states

    @staticmethod
    def _both(tokens: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        return tokens if cfg_scale == 1.0 else torch.cat([tokens, tokens], dim=0)

    def _rows(self, context: Context, text_ids, batch, cfg_scale) -> int:
        if context.states is not None:
            rows = context.states[0].shape[0]
        elif text_ids is not None:
            rows = text_ids.shape[0]
        elif batch is not None:
            rows = batch * (1 if cfg_scale == 1.0 else 2)
        else:
            raise ValueError("render() needs `batch` when neither the context nor the captions give the batch size")
        if cfg_scale != 1.0 and rows % 2:
            raise ValueError(f"classifier-free guidance needs [cond; uncond] rows, got an odd count {rows}")
        return rows

    def _render_ar(self, ctx, text, s: SamplingConfig, generator, rows, trace, use_cache=True, dvec=None):
        t_len = self.cfg.tokens_per_patch
        pos = self.positions()
        step = decode_stepper(self, s, self._prefill(ctx, text, rows), dvec, ctx.length) if use_cache else None
        # A copy, like every later token's input: the same strides and no requires_grad (a view of the
        # BOS parameter keeps it even under no_grad), so a compiled step sees one kind of input.
        x = self._bos(rows).contiguous()
        tokens, states = [], []
        for t in range(t_len + 1):
            if step is not None:
                logits, inputs = step(x, t)
            else:  # the whole prefix again; keep only the newest position
                prefix = [self._bos(rows)]
                if tokens:
                    prefix.append(self.tok_emb(self._both(torch.stack(tokens, 1), s.cfg_scale)) + pos[:t])
                h, inputs = self._run(torch.cat(prefix, dim=1), ctx, text, causal=True, dvec=dvec)
                logits, inputs = self._logits(h[:, -1]), torch.stack([z[:, -1] for z in inputs])
            if t > 0:  # inputs at real token t-1: the states to store
                states.append(inputs)
            if t == t_len:
                break
            logits = guide(logits, s.cfg_scale)
            if trace is not None:
                trace.append(logits)
            tok = sample_logits(logits, s.temperature, s.top_k, s.top_p, generator)
            tokens.append(tok)
            x = (self.tok_emb(self._both(tok, s.cfg_scale)) + pos[t])[:, None, :]
        per_layer = torch.stack(states, dim=2)  # [L, rows, T, D]
        return torch.stack(tokens, dim=1), list(per_layer.unbind(0))

    def _render_pnar(self, ctx, text, s: SamplingConfig, generator, rows, trace, dvec=None):
        t_len = self.cfg.tokens_per_patch
        steps = s.pnar_steps or self.cfg.pnar_steps
        device = self.tok_emb.weight.device
        b = rows if s.cfg_scale == 1.0 else rows // 2
        tokens = torch.zeros(b, t_len, dtype=torch.long, device=device)
        masked = torch.ones(b, t_len, dtype=torch.bool, device=device)
        pos = self.positions()
        for step in range(steps):
            m, tk = self._both(masked, s.cfg_scale), self._both(tokens, s.cfg_scale)
            x = torch.where(m[..., None], self.mask_emb, self.tok_emb(tk)) + pos
            h, _ = self._run(x, ctx, text, causal=False, dvec=dvec)
            logits = guide(self._logits(h), s.cfg_scale).float()
            drawn = sample_logits(logits, s.temperature, s.top_k, s.top_p, generator)
            conf = logits.log_softmax(-1).gather(-1, drawn[..., None])[..., 0]
            drawn = torch.where(masked, drawn, tokens)
            frac = (step + 1) / steps
            # cosine schedule: how many stay masked after this step (0 after the last step)
            n_next = int(math.floor(t_len * math.cos(0.5 * math.pi * frac)))
            n_next = max(0, min(n_next, int(masked.sum(dim=1).min()) - 1))
            tau = s.temperature * (1 - frac) + s.pnar_temperature_end * frac
            if tau > 0:
                u = torch.rand(conf.shape, generator=generator, device=conf.device if generator is None
                               else generator.device).to(conf.device).clamp_(1e-20, 1.0)
                conf = conf + tau * -torch.log(-torch.log(u))
            conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
            ranks = conf.argsort(dim=1).argsort(dim=1)
            tokens, masked = drawn, ranks < n_next
            if trace is not None:
                trace.append(int(masked.sum()))
        return tokens

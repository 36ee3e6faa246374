"""The rendering model's configuration, with named size presets (DiT / LlamaGen style).

Sizes (paper Table 4b): base = 16 layers x 768 (about 202M parameters), large = 24 x 1280
(about 809M). The paper gives only depth, width and the totals; the rest of the budget is ours:
untied token embedding and output head over the 16384 VQGAN codes, a 4x MLP, and a text
encoder (3 layers at base width, 6 at large) over a learned caption vocabulary of 8192, which
together land within 1% of both totals (`python -m model.summary base|large` prints the split).

`tiny` is for tests and the CPU demo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

RendererKind = Literal["ar", "nar", "pnar"]


@dataclass
class RenderConfig:
    # Tokens and patches. A patch is (h_p, w_p, f_p) VQGAN codes (paper: 16 x 16 x 1 = 256 px).
    vocab_size: int = 16384
    patch: tuple[int, int, int] = (16, 16, 1)
    # Nearby window (e_h, e_w, e_f): paper (2, 2, 0) for images, (1, 1, 3) for video.
    expand: tuple[int, int, int] = (2, 2, 0)
    # Network.
    n_layer: int = 16
    n_head: int = 12
    d_model: int = 768
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    renderer: RendererKind = "ar"
    rpe: Literal["pre", "post"] = "pre"
    # Ablation (Table 4d): with it off, stored states are computed with an empty context.
    context_transfer: bool = True
    # A learnable vector per generation direction, added to every input token. Without it the
    # first patch (empty pool) cannot tell which corner it is in: with the four paper directions
    # it would be drawn from a mixture of the top-left, top-right and bottom-left patches of the
    # data, and a landscape could start with ground at the top. Our addition; the paper is silent.
    direction_embedding: bool = True
    # NAR never feeds real tokens to its loss pass, so its token embedding would receive no
    # gradient (it only makes the detached pool states); tying it to the output head trains it.
    tie_embeddings: bool = False
    # Text. text_vocab_size = 0 builds an unconditional model (no text encoder, no cross-attention).
    text_vocab_size: int = 8192
    text_len: int = 64
    text_layers: int = 3
    # Activation checkpointing per block (trades compute for memory in training).
    checkpoint_blocks: bool = False
    # P-NAR decoding defaults (MaskGIT).
    pnar_steps: int = 8

    def __post_init__(self):
        self.patch = tuple(int(x) for x in self.patch)  # type: ignore[assignment]
        self.expand = tuple(int(x) for x in self.expand)  # type: ignore[assignment]
        problems = []
        if self.d_model % self.n_head:
            problems.append(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")
        if len(self.patch) != 3 or min(self.patch) < 1:
            problems.append(f"patch must be three sizes >= 1, got {self.patch}")
        if len(self.expand) != 3 or min(self.expand) < 0:
            problems.append(f"expand must be three sizes >= 0, got {self.expand}")
        if self.renderer not in ("ar", "nar", "pnar"):
            problems.append(f"renderer must be ar, nar or pnar, got {self.renderer!r}")
        if self.rpe not in ("pre", "post"):
            problems.append(f"rpe must be pre or post, got {self.rpe!r}")
        if self.renderer == "nar" and not self.tie_embeddings:
            problems.append("renderer 'nar' needs tie_embeddings: true (its token embedding is otherwise untrained)")
        if self.vocab_size < 2 or self.n_layer < 1 or self.pnar_steps < 1:
            problems.append("vocab_size >= 2, n_layer >= 1 and pnar_steps >= 1 are required")
        if problems:
            raise ValueError("invalid RenderConfig: " + "; ".join(problems))

    @property
    def tokens_per_patch(self) -> int:
        h, w, f = self.patch
        return h * w * f

    @property
    def has_text(self) -> bool:
        return self.text_vocab_size > 0

    def replace(self, **changes) -> RenderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["patch"], d["expand"] = list(self.patch), list(self.expand)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RenderConfig:
        return config_from_dict(cls, d)


def config_from_dict(cls, d: dict):
    """A config dataclass from a plain dict (e.g. a saved JSON); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    return cls(**d)


PRESETS: dict[str, dict] = {
    # Tests and the CPU demo: a few hundred thousand parameters.
    "tiny": dict(n_layer=2, n_head=4, d_model=64, text_layers=1, text_vocab_size=512, text_len=24,
                 vocab_size=256, patch=(4, 4, 1)),
    "base": dict(n_layer=16, n_head=12, d_model=768, text_layers=3),
    "large": dict(n_layer=24, n_head=20, d_model=1280, text_layers=6),
}


def preset(name: str, **overrides) -> RenderConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
    return RenderConfig(**{**PRESETS[name], **overrides})


@dataclass
class SamplingConfig:
    """How a patch is drawn. AR: temperature, top_k, top_p; P-NAR: steps and annealing."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance; 1 = off
    pnar_steps: int | None = None  # None: the model config's
    pnar_temperature_end: float = 0.0  # re-masking noise anneals linearly from temperature to this
    # How the AR token step runs (model.decoding; NAR and P-NAR ignore them): speed only, the codes
    # are the eager step's up to floating-point rounding.
    compile_decode: bool = False  # torch.compile the step (first patch pays the compile)
    cuda_graph: bool = False  # replay the step as a CUDA graph (CUDA only)
    extra: dict = field(default_factory=dict)

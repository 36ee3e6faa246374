"""How the AR renderer runs its per-token decode step: eagerly, compiled, or replayed as a CUDA graph.

A cached AR token step does little arithmetic: one token through every block against a
key/value buffer. On a GPU its time goes to launching a few dozen small kernels per block, not to
the kernels themselves, so the key/value cache alone gains little over re-running the window.
`Renderer.decode_step` is written so that the step can be made cheaper to launch:
- its shapes are the same for every token of a patch (the cache is one buffer per projection,
  the slots not yet written are masked out) and the token's slot is a tensor, not a Python int;
- nothing in it reads a value back to the host.

`SamplingConfig.compile_decode` runs the step through `torch.compile` (inductor fuses the small
element-wise kernels between the matrix products). The compiled step is kept on the renderer and
reused by every patch; a new context length recompiles once and then runs with a dynamic length.

`SamplingConfig.cuda_graph` captures the step once per patch (after the patch's context has been
written into the cache) and replays it for each token: one launch per token instead of one per
kernel. It needs the renderer on a CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from model.config import SamplingConfig

Step = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def decode_stepper(renderer, sampling: SamplingConfig, caches: list[dict], dvec: torch.Tensor | None,
                   context_length: int) -> Step:
    """A function (x [B, 1, D], own position t) -> (logits [B, V], block inputs [L, B, D]) for one patch.

    Token t's keys go to slot context_length + t of every block's buffers; the slot is filled into
    one small tensor per step, outside the compiled or captured step."""
    device = renderer.tok_emb.weight.device
    fn = compiled_decode_step(renderer) if sampling.compile_decode else renderer.decode_step
    if sampling.cuda_graph:
        if device.type != "cuda":
            raise ValueError(f"sampling.cuda_graph needs the renderer on a CUDA device, it is on {device}")
        return GraphedStep(fn, caches, dvec, context_length, device)
    slot = torch.zeros(1, dtype=torch.long, device=device)

    def step(x: torch.Tensor, t: int):
        slot.fill_(context_length + t)
        return fn(x, slot, caches, dvec)

    return step


def compiled_decode_step(renderer):
    """`renderer.decode_step` through torch.compile, compiled on first use and kept on the renderer.

    Not with weight freezing: on the CPU it measured within noise of this (inductor's pre-packed
    MKL linears, 278 against 268 tokens/s at batch 1), and a frozen step would go on using the
    weights it was compiled with after they change."""
    compiled = getattr(renderer, "_compiled_decode_step", None)
    if compiled is None:
        compiled = torch.compile(renderer.decode_step)
        renderer._compiled_decode_step = compiled  # a plain attribute: no state_dict entry
    return compiled


class GraphedStep:
    """One patch's decode step captured as a CUDA graph and replayed per token.

    The graph reads its input from fixed tensors (`x`, `slot`) and writes the key/value cache in
    place, so a replay is the whole step. The capture is preceded by one warm-up run on a side
    stream, as CUDA graphs require; that run writes the BOS's keys into the BOS's slot, which is exactly
    what the first replay writes again.
    """

    def __init__(self, fn, caches: list[dict], dvec: torch.Tensor | None, context_length: int,
                 device: torch.device):
        self.x: torch.Tensor | None = None
        self.context_length = context_length
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.fn, self.caches, self.dvec = fn, caches, dvec
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def _capture(self, x: torch.Tensor) -> None:
        self.x = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            self.fn(self.x, self.slot, self.caches, self.dvec)
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.fn(self.x, self.slot, self.caches, self.dvec)

    def __call__(self, x: torch.Tensor, t: int):
        self.slot.fill_(self.context_length + t)
        if self.graph is None:
            self._capture(x)
        self.x.copy_(x)
        self.graph.replay()
        logits, inputs = self.out
        # The graph overwrites its outputs on the next replay; the caller keeps these.
        return logits.clone(), inputs.clone()

"""The AR decode step (model.decoding): static shapes, torch.compile, CUDA graphs where CUDA exists."""

import pytest
import torch
import torch._dynamo

from model.blocks import Attention
from model.config import SamplingConfig
from tests.test_model import ar_context, fill_pool, make, text

pytestmark = pytest.mark.usefixtures("one_thread")
DIRECTION = "down-right-forward"


def draw(model, ctx, ids, mask, sampling: SamplingConfig, seed=3, device="cpu"):
    """Codes, stored states and per-token logits of one patch."""
    trace = []
    tokens, states = model.render(ctx, ids, mask, sampling, torch.Generator(device=device).manual_seed(seed),
                                  trace=trace, direction=DIRECTION)
    return tokens, states, torch.stack(trace, dim=1)


def test_every_token_step_sees_the_same_shapes(monkeypatch):
    # The condition for compiling the step once and for capturing it as a CUDA graph.
    m, ids, mask, ctx = ar_context("post", (2, 1, 12, 12), DIRECTION)
    shapes = []
    attend = Attention.attend

    def recording(self, x, k, v, attn_mask):
        if x.shape[1] == 1:  # a decode step (the caption encoder runs over its whole caption once)
            shapes.append((tuple(k.shape), None if attn_mask is None else tuple(attn_mask.shape)))
        return attend(self, x, k, v, attn_mask)

    monkeypatch.setattr(Attention, "attend", recording)
    tokens, _, _ = draw(m, ctx, ids, mask, SamplingConfig())
    steps = tokens.shape[1] + 1  # the BOS and every token
    per_layer_and_attention = len(shapes) // steps
    assert len(shapes) == steps * per_layer_and_attention
    by_call = [set(shapes[i::per_layer_and_attention]) for i in range(per_layer_and_attention)]
    assert all(len(s) == 1 for s in by_call), by_call
    own = m.cfg.tokens_per_patch + 1
    assert by_call[0].pop()[0][2] == ctx.length + own  # keys: the whole context plus a slot per own token


@pytest.mark.parametrize("rpe,cfg_scale", [("pre", 1.0), ("post", 2.0)])
def test_compiled_step_draws_the_eager_codes_and_compiles_once(rpe, cfg_scale):
    m, ids, mask, ctx = ar_context(rpe, (2, 1, 12, 12), DIRECTION)
    if cfg_scale != 1.0:  # guidance: [cond; uncond] rows in the context and the captions
        ctx = ctx.repeat_batch(2)
        ids, mask = torch.cat([ids, torch.zeros_like(ids)]), torch.cat([mask, torch.zeros_like(mask)])
    sampling = SamplingConfig(top_k=50, cfg_scale=cfg_scale)
    eager = draw(m, ctx, ids, mask, sampling)
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled_sampling = SamplingConfig(top_k=50, cfg_scale=cfg_scale, compile_decode=True)
    compiled = draw(m, ctx, ids, mask, compiled_sampling)
    again = draw(m, ctx, ids, mask, compiled_sampling)  # a second patch of the same shapes reuses it
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 1
    for run in (compiled, again):
        assert torch.equal(run[0], eager[0])
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(run[1], eager[1]))
        assert torch.allclose(run[2], eager[2], atol=1e-4)


def test_compiled_step_recompiles_once_for_new_context_lengths():
    # Patches at the grid's edges have shorter contexts: the second length makes the length dynamic.
    m, ids, mask = make("ar", "pre"), *text()
    codes = torch.randint(0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    lengths = []
    for upto in [(0, 0, 0), (0, 1, 0), (1, 1, 0), (2, 2, 0), (1, 0, 0)]:
        _, ctx = fill_pool(m, codes, DIRECTION, upto, ids, mask)
        lengths.append(ctx.length)
        eager = draw(m, ctx, ids, mask, SamplingConfig(top_k=50))
        compiled = draw(m, ctx, ids, mask, SamplingConfig(top_k=50, compile_decode=True))
        assert torch.equal(compiled[0], eager[0])
    assert len(set(lengths)) == 5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - before == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graph_is_refused_without_cuda():
    m, ids, mask, ctx = ar_context("pre", (2, 1, 12, 12), DIRECTION)
    with pytest.raises(ValueError, match="cuda_graph needs the renderer on a CUDA device"):
        draw(m, ctx, ids, mask, SamplingConfig(cuda_graph=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("compile_decode", [False, True])
def test_cuda_graph_step_draws_the_eager_codes(compile_decode):
    m, ids, mask, ctx = ar_context("post", (2, 1, 12, 12), DIRECTION)
    m = m.cuda()
    ctx = type(ctx)([s.cuda() for s in ctx.states], ctx.offsets.cuda(), ctx.patches)
    ids, mask = ids.cuda(), mask.cuda()
    eager = draw(m, ctx, ids, mask, SamplingConfig(top_k=50), device="cuda")
    graphed = draw(m, ctx, ids, mask, SamplingConfig(top_k=50, cuda_graph=True, compile_decode=compile_decode),
                   device="cuda")
    assert torch.equal(graphed[0], eager[0])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(graphed[1], eager[1]))
    assert torch.allclose(graphed[2], eager[2], atol=1e-4)

"""The rendering model: causality, the AR cache, locality, gradients, P-NAR decoding, sizes."""

from itertools import combinations

import pytest
import torch

from model.config import SamplingConfig, preset
from model.directions import PAPER_DIRECTIONS, Direction
from model.patches import get_patch, patch_grid, put_patch
from model.pool import Context, ContextPool
from model.renderer import Renderer
from model.summary import summarize

KINDS = [("ar", "pre"), ("ar", "post"), ("nar", "pre"), ("pnar", "pre"), ("pnar", "post")]


def make(kind="ar", rpe="pre", **kw):
    torch.manual_seed(0)
    cfg = preset("tiny", renderer=kind, rpe=rpe, tie_embeddings=kind == "nar", **kw)
    return Renderer(cfg).eval()


def text(rows=2, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 100, (rows, n), generator=g), torch.ones(rows, n, dtype=torch.bool)


def fill_pool(model, codes, direction, upto, ids=None, mask=None):
    """Render every patch before `upto` teacher-forced; return the pool and upto's context."""
    grid = patch_grid(codes.shape, model.cfg.patch)
    d = Direction.parse(direction)
    pool = ContextPool(grid, d, model.cfg.expand)
    for coord in d.schedule(grid):
        if coord == upto:
            return pool, pool.context(coord)
        states = model.states_for(get_patch(codes, coord, model.cfg.patch), pool.context(coord), ids, mask,
                                  direction=d)
        pool.add(coord, states)
        pool.remove(coord)
    raise AssertionError("upto not in grid")


def ar_context(rpe, codes_shape, direction):
    """A seeded AR model, a caption, and the context of patch (1, 1, 0) after teacher-forcing random codes."""
    m = make("ar", rpe)
    ids, mask = text()
    codes = torch.randint(0, 256, codes_shape)
    _, ctx = fill_pool(m, codes, direction, (1, 1, 0), ids, mask)
    return m, ids, mask, ctx


def test_ar_logits_at_t_ignore_later_tokens():
    m = make()
    ids, mask = text()
    tok = torch.randint(0, 256, (2, 16))
    ctx = Context.empty()
    a = m(tok, ctx, ids, mask).logits
    tok2 = tok.clone()
    tok2[:, 9:] = torch.randint(0, 256, (2, 7))
    b = m(tok2, ctx, ids, mask).logits
    # position t predicts token t+1 from tokens <= t: positions 0..9 see only tokens 0..8
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("rpe", ["pre", "post"])
def test_ar_cached_sampling_logits_equal_teacher_forced(rpe):
    m, ids, mask, ctx = ar_context(rpe, (2, 1, 12, 12), "down-right-forward")
    assert ctx.length > 0
    trace = []
    tok, states = m.render(ctx, ids, mask, SamplingConfig(temperature=1.0),
                           torch.Generator().manual_seed(3), trace=trace)
    cached = torch.stack(trace, dim=1)
    forced = m(tok, ctx, ids, mask)
    assert torch.allclose(cached, forced.logits, atol=1e-5)
    for a, b in zip(states, forced.states):  # stored states match the loss pass too
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kind,rpe", KINDS)
def test_patch_output_depends_only_on_its_window_of_rendered_patches(kind, rpe):
    codes = torch.randint(0, 256, (2, 1, 20, 24))  # 5 x 6 patches, window (2, 2, 0)
    target = (2, 3, 0)
    ids, mask = text()

    def logits(model, c):
        _, ctx = fill_pool(model, c, "down-right-forward", target, ids, mask)
        g = torch.Generator().manual_seed(0)
        return model(get_patch(c, target, model.cfg.patch), ctx, ids, mask, generator=g).logits

    def changed(coord):
        c = codes.clone()
        put_patch(c, coord, (4, 4, 1), torch.randint(0, 256, (2, 16)))
        return c

    # Without context transfer a stored state carries only its own patch, so exactly the rendered
    # patches inside the window matter.
    local = make(kind, rpe, context_transfer=False)
    ref = logits(local, codes)
    assert torch.allclose(logits(local, changed((2, 0, 0))), ref)  # rendered, 3 columns away
    assert torch.allclose(logits(local, changed((4, 3, 0))), ref)  # same column, rendered later
    assert torch.allclose(logits(local, changed((2, 4, 0))), ref)  # in the window, not yet rendered
    assert not torch.allclose(logits(local, changed((1, 2, 0))), ref)  # in the window and rendered
    # With transfer, the far patch reaches the target through the chain of stored states.
    chained = make(kind, rpe, context_transfer=True)
    assert not torch.allclose(logits(chained, changed((2, 0, 0))), logits(chained, codes))
    assert torch.allclose(logits(chained, changed((2, 4, 0))), logits(chained, codes))


@pytest.mark.parametrize("kind,rpe", KINDS)
@pytest.mark.parametrize("with_text", [True, False])
def test_every_parameter_gets_a_gradient_on_every_patch_step(kind, rpe, with_text):
    m = make(kind, rpe, **({} if with_text else {"text_vocab_size": 0})).train()
    ids, mask = text() if with_text else (None, None)
    codes = torch.randint(0, 256, (2, 1, 8, 12))
    grid = patch_grid(codes.shape, m.cfg.patch)
    d = Direction.parse("right-up-forward")
    pool = ContextPool(grid, d, m.cfg.expand)
    for n, coord in enumerate(d.schedule(grid)):
        m.zero_grad(set_to_none=True)
        ctx = pool.context(coord)
        assert (ctx.states is None) == (n == 0)
        out = m(get_patch(codes, coord, m.cfg.patch), ctx, ids, mask, generator=torch.Generator().manual_seed(n))
        out.loss.backward()
        missing = [name for name, p in m.named_parameters() if p.grad is None]
        assert not missing, f"patch {n}: no gradient for {missing}"
        assert all(not s.requires_grad for s in out.states)
        pool.add(coord, out.states)
        pool.remove(coord)


def test_dropped_caption_equals_no_caption():
    m = make()
    tok = torch.randint(0, 256, (2, 16))
    ids, mask = text()
    dropped = m(tok, Context.empty(), ids, torch.zeros_like(mask)).logits
    none = m(tok, Context.empty()).logits
    assert torch.allclose(dropped, none, atol=1e-6)
    assert not torch.allclose(m(tok, Context.empty(), ids, mask).logits, none)


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_pnar_decoding_unmasks_everything_in_the_configured_steps(steps):
    m = make("pnar")
    ids, mask = text()
    trace = []
    tok, states = m.render(Context.empty(), ids, mask, SamplingConfig(pnar_steps=steps),
                           torch.Generator().manual_seed(0), trace=trace)
    assert len(trace) == steps and trace[-1] == 0
    assert trace == sorted(trace, reverse=True)
    assert tok.shape == (2, 16) and int(tok.min()) >= 0 and int(tok.max()) < 256
    assert len(states) == m.cfg.n_layer and states[0].shape == (2, 16, 64)


@pytest.mark.parametrize("kind", ["ar", "nar", "pnar"])
def test_classifier_free_guidance_rows(kind):
    m = make(kind)
    ids, mask = text(rows=4)
    mask[2:] = False  # [cond; uncond]
    tok, states = m.render(Context.empty(), ids, mask, SamplingConfig(cfg_scale=3.0), torch.Generator().manual_seed(0))
    assert tok.shape == (2, 16) and states[0].shape[0] == 4
    with pytest.raises(ValueError, match="needs `batch`"):
        m.render(Context.empty(), sampling=SamplingConfig())
    tok, _ = m.render(Context.empty(), sampling=SamplingConfig(), batch=3, generator=torch.Generator())
    assert tok.shape == (3, 16)


def test_bad_inputs_are_clear_errors():
    m = make()
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        m(torch.zeros(2, 15, dtype=torch.long), Context.empty())
    with pytest.raises(ValueError, match="does not divide"):
        patch_grid((1, 10, 12), (4, 4, 1))
    with pytest.raises(ValueError, match="nar"):
        preset("tiny", renderer="nar")
    with pytest.raises(ValueError, match="divisible"):
        preset("tiny", n_head=3)
    with pytest.raises(ValueError, match="without text"):
        make(text_vocab_size=0)(torch.zeros(2, 16, dtype=torch.long), Context.empty(), *text())


def test_preset_sizes_match_the_paper():
    for name, paper in (("base", 202e6), ("large", 809e6)):
        s = summarize(name)
        assert abs(s["total"] / paper - 1) < 0.05, (name, s["total"])
        assert sum(s["parts"].values()) == s["total"]
    cfg = preset("base")
    assert (cfg.n_layer, cfg.d_model) == (16, 768) and preset("large").n_layer == 24


@pytest.mark.parametrize("rpe", ["pre", "post"])
@pytest.mark.parametrize("empty_pool", [False, True])
def test_ar_sampling_with_and_without_cache_draws_the_same_codes(rpe, empty_pool):
    d = "right-down-forward"
    m, ids, mask, ctx = ar_context(rpe, (2, 1, 8, 8), d)
    if empty_pool:  # the first patch: the cache holds own slots only
        ctx = Context.empty()
    a, sa = m.render(ctx, ids, mask, SamplingConfig(top_k=50), torch.Generator().manual_seed(5), direction=d)
    b, sb = m.render(ctx, ids, mask, SamplingConfig(top_k=50), torch.Generator().manual_seed(5), use_cache=False,
                     direction=d)
    assert torch.equal(a, b)
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(sa, sb))


@pytest.mark.parametrize("kind", ["ar", "nar", "pnar"])
def test_direction_embedding_tells_the_first_patch_which_corner_it_is(kind):
    # With an empty pool the direction is the only thing that says where the patch is.
    ids, mask = text()
    tok = torch.randint(0, 256, (2, 16))

    def logits(model, d):
        return model(tok, Context.empty(), ids, mask, generator=torch.Generator().manual_seed(0), direction=d).logits

    on = make(kind)
    by_dir = {d: logits(on, d) for d in PAPER_DIRECTIONS}
    assert all(not torch.allclose(by_dir[a], by_dir[b]) for a, b in combinations(PAPER_DIRECTIONS, 2))
    assert torch.equal(logits(on, None), by_dir["down-right-forward"])  # None means the default order
    off = make(kind, direction_embedding=False)
    assert off.dir_emb is None
    first = logits(off, PAPER_DIRECTIONS[0])
    assert all(torch.equal(first, logits(off, d)) for d in PAPER_DIRECTIONS[1:])

"""The sampler (Algorithm 2): flat memory in a column order, extension, the AR cache, guidance."""

import pytest
import torch

from model.config import SamplingConfig, preset
from model.directions import Direction, Grid
from model.renderer import Renderer
from model.vqgan import VQGAN, VQGANConfig
from pipeline.formats.text_tokenizer import byte_level
from pipeline.sampling.generate import (
    CodeCollector,
    GivenCodes,
    MemoryLedger,
    Slab,
    Tee,
    extension_plan,
    generate,
    slab_axis,
)
from pipeline.sampling.stream_decode import Canvases, ImageStreamDecoder

TRAINED = Grid(2, 2)  # the tiny model's "training size" in these tests: 2 x 2 patches


pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


def renderer(kind="ar", text=False, seed=0):
    torch.manual_seed(seed)
    cfg = preset("tiny", renderer=kind, tie_embeddings=kind == "nar", **({} if text else {"text_vocab_size": 0}))
    return Renderer(cfg).eval()


def sharpen(model, std=0.2):
    """Widen the blocks' random weights so that attention (and so the context) visibly steers the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and name.startswith("blocks."):
                p.mul_(std / p.std())
        if model.dir_emb is not None:  # a random direction vector is a constant shift of every token that can
            model.dir_emb.zero_()  # swamp a random model's greedy output; trained, it is what tells corners apart
    return model


def small_vqgan(seed=0):
    """f2, one attention block in the middle: global attention, so decode windows matter."""
    torch.manual_seed(seed)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8,
                      n_embed=256, resolution=16)
    return VQGAN(cfg).eval()


def stream_peak(model, vq, grid, direction, tmp_path, sampling=None):
    """Generate `grid` through the streaming decoder; the sampler's peak of held bytes."""
    hp, wp, _ = model.cfg.patch
    code_hw = (grid.H * hp, grid.W * wp)
    f = vq.downsample
    axis = slab_axis(Direction.parse(direction), grid)
    ledger = MemoryLedger()
    with Canvases(tmp_path, [(code_hw[0] * f, code_hw[1] * f, 3)]) as canvases:
        dec = ImageStreamDecoder(vq, code_hw, canvases.arrays, axis, model.cfg.patch[axis], 2, ledger)
        stats = generate(model, grid, direction, dec, sampling=sampling, ledger=ledger,
                         generator=torch.Generator().manual_seed(0))
        dec.finish()
        assert canvases.arrays[0].any()  # pixels reached the canvas
    assert stats.patches_generated == len(grid)
    return stats


def test_column_order_memory_is_flat_in_width_and_row_order_is_not(tmp_path):
    model, vq = renderer("ar"), small_vqgan()
    wide = Grid(TRAINED.H, 8 * TRAINED.W)
    narrow = Grid(TRAINED.H, 2 * TRAINED.W)
    col_2x = stream_peak(model, vq, narrow, "down-right", tmp_path)
    col_8x = stream_peak(model, vq, wide, "down-right", tmp_path)
    assert col_8x.grid == (2, 16, 1) and col_8x.patches_generated == 32
    p2, p8 = col_2x.memory["peak_bytes"], col_8x.memory["peak_bytes"]
    assert p2 > 0 and abs(p8 - p2) <= 0.05 * p2, (col_2x.memory, col_8x.memory)
    for group in ("pool", "slab", "decoder_codes", "decoder_pixels"):
        assert col_8x.memory["group_peaks"][group] > 0
    # the same accounting sees a row order grow with the width (pool rows, code rows, pixel rows)
    nar = renderer("nar")
    row_2x = stream_peak(nar, vq, narrow, "right-down", tmp_path)
    row_8x = stream_peak(nar, vq, wide, "right-down", tmp_path)
    assert row_8x.memory["peak_bytes"] > 1.5 * row_2x.memory["peak_bytes"]
    assert row_8x.memory["group_peaks"]["pool"] > 2.5 * row_2x.memory["group_peaks"]["pool"]
    for group in ("slab", "decoder_codes", "decoder_pixels"):  # one row of codes / pixels: 4x as wide
        assert row_8x.memory["group_peaks"][group] == 4 * row_2x.memory["group_peaks"][group]


@pytest.mark.parametrize("side", ["right", "left", "down", "up"])
def test_extension_keeps_given_codes_and_fills_the_new_area(side):
    model = renderer("ar", text=side == "right")
    g = torch.Generator().manual_seed(3)
    given = torch.randint(0, 256, (1, 1, 8, 8), generator=g)  # 2 x 2 patches of 4 x 4 codes
    grid, origin, direction = extension_plan((8, 8), side, 4, model.cfg.patch)
    assert direction == Direction.parse({"right": "down-right", "left": "down-left",
                                         "down": "right-down", "up": "right-up"}[side])
    kwargs = {}
    if side == "right":  # also the guided path: [cond; uncond] rows in the pool
        ids, mask = byte_level().encode(["a green valley"], model.cfg.text_len)
        kwargs = dict(text_ids=ids, text_mask=mask, sampling=SamplingConfig(cfg_scale=3.0, top_k=50))

    def run(model, given_codes, **kw):
        out = CodeCollector()
        stats = generate(model, grid, direction, out, given=GivenCodes(given_codes, origin),
                         generator=torch.Generator().manual_seed(0), **kw)
        return out.codes(), stats

    codes, stats = run(model, given, **kwargs)
    assert codes.shape == (1, 1, grid.H * 4, grid.W * 4)
    assert stats.patches_primed == 4 and stats.patches_generated == len(grid) - 4
    oi, oj = origin[0] * 4, origin[1] * 4
    assert torch.equal(codes[:, :, oi:oi + 8, oj:oj + 8], given)
    new = torch.ones(codes.shape, dtype=torch.bool)
    new[:, :, oi:oi + 8, oj:oj + 8] = False
    assert (codes[new] >= 0).all() and (codes[new] < 256).all()  # every new code drawn (slabs start at -1)
    assert codes[new].unique().numel() > 8
    # the new patches are conditioned on the primed pool: other given codes, same seed, other codes
    # (a random tiny model barely looks at its context, so widen its weights and decode greedily)
    sharp, greedy = sharpen(renderer("ar")), SamplingConfig(temperature=0.0)
    other = (given + 1) % 256
    a, _ = run(sharp, given, sampling=greedy)
    b, _ = run(sharp, other, sampling=greedy)
    assert torch.equal(b[:, :, oi:oi + 8, oj:oj + 8], other)
    assert (a[new] != b[new]).sum() > 8


@pytest.mark.parametrize("direction", ["down-right", "right-up"])
def test_ar_with_cache_gives_the_same_codes_as_without(direction):
    model = renderer("ar", text=True)
    ids, mask = byte_level().encode(["snowy peaks", "a lake"], model.cfg.text_len)
    grid = Grid(2, 3)
    sampling = SamplingConfig(temperature=1.0, top_k=100, top_p=0.95)
    outs, seen = [], []
    render = model.render

    def spy(*args, **kwargs):  # the flag must reach the renderer, else the comparison proves nothing
        seen.append(kwargs["use_cache"])
        return render(*args, **kwargs)

    model.render = spy
    for use_cache in (True, False):
        out = CodeCollector()
        generate(model, grid, direction, out, text_ids=ids, text_mask=mask, sampling=sampling,
                 generator=torch.Generator().manual_seed(7), use_cache=use_cache)
        outs.append(out.codes())
    assert seen == [True] * len(grid) + [False] * len(grid)
    assert outs[0].shape == (2, 1, 8, 12)
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0][0], outs[0][1])  # two prompts, two different images


def test_nar_and_pnar_fill_any_direction_and_seed_reproduces():
    for kind in ("nar", "pnar"):
        model = renderer(kind)
        runs = []
        for seed in (1, 1, 2):
            out = CodeCollector()
            generate(model, Grid(3, 2), "down-left", out, batch=2, generator=torch.Generator().manual_seed(seed),
                     sampling=SamplingConfig(pnar_steps=3, pnar_temperature_end=0.0))
            runs.append(out.codes())
        assert runs[0].shape == (2, 1, 12, 8) and (runs[0] >= 0).all()
        assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_slabs_arrive_in_order_and_complete():
    model = renderer("nar")
    seen = []

    class Record:
        def push(self, slab: Slab):
            seen.append((slab.axis, slab.index, tuple(slab.codes.shape), bool((slab.codes >= 0).all())))

    generate(model, Grid(2, 3), "down-left", Tee(Record(), CodeCollector()))
    assert seen == [(1, 2, (1, 1, 8, 4), True), (1, 1, (1, 1, 8, 4), True), (1, 0, (1, 1, 8, 4), True)]
    seen.clear()
    generate(model, Grid(2, 3), "right-up", Record())
    assert [s[:3] for s in seen] == [(0, 1, (1, 1, 4, 12)), (0, 0, (1, 1, 4, 12))]


def test_bad_requests_are_clear_errors():
    model = renderer("ar")
    with pytest.raises(ValueError, match="without text"):
        generate(model, Grid(1, 1), "down-right", CodeCollector(), text_ids=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a prompt"):
        generate(renderer("ar", text=True), Grid(1, 1), "down-right", CodeCollector(),
                 sampling=SamplingConfig(cfg_scale=2.0))
    with pytest.raises(ValueError, match="whole patches"):
        extension_plan((8, 6), "right", 4, model.cfg.patch)
    with pytest.raises(ValueError, match="multiple of the patch"):
        extension_plan((8, 8), "up", 3, model.cfg.patch)
    with pytest.raises(ValueError, match="do not fit"):
        generate(model, Grid(1, 1), "down-right", CodeCollector(),
                 given=GivenCodes(torch.zeros(1, 1, 8, 8, dtype=torch.long)))

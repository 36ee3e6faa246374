"""The single-image source: ingest, crops, tiled tokenisation, training windows, continuation, copy figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.config import preset
from model.directions import Direction, Grid
from model.pool import ContextPool
from model.renderer import Renderer
from model.tiles import encode_tiled
from model.vqgan import VQGAN, VQGANConfig
from pipeline.config import ConfigError, load_config
from pipeline.curation import single_image as ingest
from pipeline.evaluation.copying import analyse, longest_column_copy
from pipeline.formats import canvas
from pipeline.formats.manifest import SINGLE_IMAGE_MANIFEST, open_pixels, read_rows
from pipeline.ranks import RankInfo
from pipeline.sampling.generate import CodeCollector, GivenCodes, MemoryLedger, extension_plan, generate
from pipeline.sampling.given import encode_picture, read_code_file
from pipeline.tokens.single_image import SingleImageCrops, tokenize_canvases
from pipeline.training.data import DataError, check_windows, holdout_windows
from pipeline.training.settings import WindowSettings

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py

# f8 with global attention in the middle block (like the demo's tiny_f8), small enough for tests.
VQ = dict(ch=16, ch_mult=[1, 1, 1, 1], num_res_blocks=1, attn_resolutions=[], z_channels=8, embed_dim=8,
          n_embed=32, norm_groups=8, resolution=64)


def small_vqgan(seed: int = 0) -> VQGAN:
    torch.manual_seed(seed)
    return VQGAN(VQGANConfig(**VQ)).eval()


def write_config(tmp_path, image, **single) -> object:
    cfg = {"run_dir": str(tmp_path / "run"), "seed": 3,
           "vqgan": {"preset": "tiny_f8", "overrides": VQ},
           "model": {"preset": "tiny", "vocab_size": 32},
           "single_image": {"image": str(image), **single}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def strip_image(path, h=40, w=300, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


# ----------------------------------------------------------------------------- ingest and crops


def test_ingest_cuts_the_usable_box_and_holds_out_a_strip_of_whole_patches(tmp_path):
    pixels = strip_image(tmp_path / "scroll.png", h=40, w=300)
    cfg = write_config(tmp_path, tmp_path / "scroll.png", holdout_side="right", holdout_fraction=0.1)
    rows = ingest.ingest(cfg, ingest.read_section(cfg))
    assert len(rows) == 1
    row = rows[0]
    # f8: 40 x 300 px -> a usable box of 40 x 296 px; patches of 4 x 4 codes are 32 px; 10% of 296 px is
    # 29.6 px, rounded to one patch: the held-out strip is the last 32 px.
    assert list(row["box"]) == [0, 0, 296, 40]
    assert list(row["holdout_box"]) == [264, 0, 296, 40] and list(row["train_box"]) == [0, 0, 264, 40]
    assert np.array_equal(open_pixels(row), pixels)
    assert read_rows(cfg.run_dir / SINGLE_IMAGE_MANIFEST)[0]["id"] == row["id"]
    # a second run finds the work done; another setting makes it again
    npy = cfg.run_dir / "data/single_image" / f"{row['id']}.npy"
    before = npy.stat().st_mtime_ns
    ingest.ingest(cfg, ingest.read_section(cfg))
    assert npy.stat().st_mtime_ns == before
    cfg2 = write_config(tmp_path, tmp_path / "scroll.png", holdout_side="up", holdout_pixels=0)
    row2 = ingest.ingest(cfg2, ingest.read_section(cfg2))[0]
    assert list(row2["holdout_box"]) == [] and list(row2["train_box"]) == [0, 0, 296, 40]
    # mirror: a second image, the usable box flipped left-right, its held-out strip now at the left end
    cfg3 = write_config(tmp_path, tmp_path / "scroll.png", holdout_pixels=64, mirror=True)
    plain, mirror = ingest.ingest(cfg3, ingest.read_section(cfg3))
    assert mirror["id"] == plain["id"] + "-mirror" and mirror["id"] > plain["id"]  # the original sorts first
    assert np.array_equal(open_pixels(mirror), pixels[:, :296][:, ::-1])
    assert list(mirror["train_box"]) == [64, 0, 296, 40] and list(mirror["holdout_box"]) == [0, 0, 64, 40]


def test_ingest_errors_name_the_file_and_the_key(tmp_path, caplog):
    (tmp_path / "notes.png").write_text("not an image")
    cfg = write_config(tmp_path, tmp_path / "notes.png")
    assert ingest.main(["--config", str(cfg.path)]) == 1
    err = caplog.text
    assert "single_image.image" in err and "notes.png" in err and "not_an_image" in err
    cfg = write_config(tmp_path, tmp_path / "missing.png")
    with pytest.raises(ConfigError, match="file not found"):
        ingest.ingest(cfg, ingest.read_section(cfg))
    strip_image(tmp_path / "small.png", h=40, w=64)
    cfg = write_config(tmp_path, tmp_path / "small.png", holdout_pixels=64)
    with pytest.raises(ConfigError, match="leaves nothing to train on"):
        ingest.ingest(cfg, ingest.read_section(cfg))


def test_vqgan_crops_never_touch_the_held_out_strip(tmp_path):
    strip_image(tmp_path / "scroll.png", h=40, w=300)
    cfg = write_config(tmp_path, tmp_path / "scroll.png", holdout_pixels=64)
    row = ingest.ingest(cfg, ingest.read_section(cfg))[0]
    x0, _, x1, _ = row["train_box"]
    pixels = np.asarray(open_pixels(row)).astype(np.float32) / 127.5 - 1
    crops = SingleImageCrops([row], 16, flip=False, seed=1)
    lefts = set()
    for draw in range(200):
        crop = crops[(0, draw)].permute(1, 2, 0).numpy()
        hits = [(y, x) for y in range(0, 40 - 15) for x in range(x0, x1 - 15)
                if np.allclose(pixels[y:y + 16, x:x + 16], crop)] if draw < 5 else None
        if hits is not None:
            assert len(hits) == 1  # the crop is a window of the training box (random pixels: unique)
            lefts.add(hits[0][1])
        assert torch.equal(crops[(0, draw)], crops[(0, draw)])  # a function of (seed, draw)
    assert len(lefts) > 1
    with pytest.raises(ConfigError, match="smaller than"):
        SingleImageCrops([row], 48, flip=False, seed=1)


# ----------------------------------------------------------------------------- tiled tokenisation


def test_tiled_encoding_equals_one_pass_when_a_tile_covers_the_image():
    vq = small_vqgan()
    img = np.random.default_rng(1).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    whole = vq.encode(torch.from_numpy(img).permute(2, 0, 1)[None].float().div(127.5).sub(1))[0]
    assert torch.equal(encode_tiled(vq, img, tile=48, margin=0), whole)
    tiled = encode_tiled(vq, img, tile=16, margin=8, batch_size=3)
    assert tiled.shape == (4, 6) and tiled.dtype == torch.long
    assert torch.equal(tiled, encode_tiled(vq, img, tile=16, margin=8, batch_size=1))  # batching changes nothing
    with pytest.raises(ValueError, match="multiples"):
        encode_tiled(vq, img, tile=12, margin=8)
    # an extension's picture input: one pass without sample.encode_tile (or when a tile covers it), else tiles
    assert torch.equal(encode_picture(vq, img, None, 8)[0, 0], whole)
    assert torch.equal(encode_picture(vq, img, 48, 8)[0, 0], whole)
    assert torch.equal(encode_picture(vq, img, 16, 8)[0, 0], tiled)


def make_canvas(folder, codes: np.ndarray, train_box, holdout_box, vocab=32, cid="c0"):
    meta = canvas.CanvasMeta(vocab_size=vocab, downsample=8, vqgan_sha256="0" * 64, tile=64, margin=16)
    folder.mkdir(parents=True, exist_ok=True)
    canvas.write_meta(folder, meta)
    return canvas.write_canvas(folder, cid, codes, train_box, holdout_box, "a scroll", "test", meta)


def test_tokenisation_writes_one_canvas_per_image_with_its_boxes_in_codes(tmp_path):
    strip_image(tmp_path / "scroll.png", h=40, w=300)
    cfg = write_config(tmp_path, tmp_path / "scroll.png", holdout_pixels=64)
    rows = ingest.ingest(cfg, ingest.read_section(cfg))
    vq = small_vqgan()
    out = tmp_path / "canvases"
    stats = tokenize_canvases(rows, out, vq, torch.device("cpu"), "ab" * 32, tile=32, margin=8,
                              ranks=RankInfo(0, 1, 0))
    assert stats["canvases"] == 1
    cset = canvas.CanvasSet(out)
    (c,) = cset.canvases
    assert c.shape == (1, 5, 37) and c.train_box == (0, 0, 29, 5) and c.holdout_box == (29, 0, 37, 5)
    box = rows[0]["box"]
    want = encode_tiled(vq, np.asarray(open_pixels(rows[0]))[:box[3], :box[2]], 32, 8)
    assert np.array_equal(c.codes()[0], want.numpy())
    # a second canvas whose file name sorts first still comes after in id order
    canvas.write_canvas(out, f"{c.id}-mirror", c.codes(), c.train_box, c.holdout_box, "", "", cset.meta)
    assert [x.id for x in canvas.CanvasSet(out).canvases] == [c.id, f"{c.id}-mirror"]
    assert tokenize_canvases(rows, out, vq, torch.device("cpu"), "ab" * 32, 32, 8, RankInfo(0, 1, 0)) == \
        {"canvases": 0, "skipped": 1, "codes": 0}
    with pytest.raises(canvas.ShardError, match="made with"):  # another VQGAN into the same folder
        tokenize_canvases(rows, out, vq, torch.device("cpu"), "cd" * 32, 32, 8, RankInfo(0, 1, 0))


# ----------------------------------------------------------------------------- windows


def test_holdout_windows_cover_the_held_out_box_exactly(tmp_path):
    codes = np.random.default_rng(0).integers(0, 32, size=(1, 20, 90))
    make_canvas(tmp_path, codes, (0, 0, 60, 20), (60, 0, 90, 20))
    cset = canvas.CanvasSet(tmp_path)
    ws = holdout_windows(cset, (8, 12), (4, 4, 1))  # 20 x 30 codes is not a whole number of 8 x 12 windows
    covered = np.zeros((20, 90), dtype=int)
    for i, (_, y, x) in enumerate(ws.corners):
        assert 60 <= x and x + 12 <= 90 and 0 <= y and y + 8 <= 20
        assert np.array_equal(ws.codes(i)[0], codes[0, y:y + 8, x:x + 12])
        covered[y:y + 8, x:x + 12] += 1
    assert (covered[:, 60:] >= 1).all() and not covered[:, :60].any()
    whole = holdout_windows(cset, None, (4, 4, 1))  # the box cut to whole patches: 20 x 28 codes, twice to cover it
    assert whole.meta.grid == (1, 20, 28) and [x for _, _, x in whole.corners] == [60, 62]


def test_training_windows_stay_in_the_training_box_and_depend_on_seed_and_epoch(tmp_path):
    codes = np.random.default_rng(0).integers(0, 32, size=(1, 16, 120))
    make_canvas(tmp_path, codes, (0, 0, 100, 16), (100, 0, 120, 16))
    cfg = preset("tiny", vocab_size=32)
    plan, grid = check_windows(tmp_path, cfg, WindowSettings(size=(4, 6), per_epoch=40), global_batch=8, seed=1)
    assert grid == Grid(4, 6) and plan.size == (16, 24)
    e0, e1 = plan.for_epoch(0), plan.for_epoch(1)
    assert len(e0) == 40 and e0.meta.grid == (1, 16, 24) and e0.corners != e1.corners
    again, _ = check_windows(tmp_path, cfg, WindowSettings(size=(4, 6), per_epoch=40), global_batch=8, seed=1)
    assert again.for_epoch(1).corners == e1.corners  # a function of (seed, epoch): no state, any rank count
    xs = {x for _, _, x in e0.corners + e1.corners}
    assert all(0 <= x <= 100 - 24 for x in xs) and len(xs) > 10 and any(x % 4 for x in xs)  # code-aligned
    for i in range(len(e0)):
        _, y, x = e0.corners[i]
        assert np.array_equal(e0.codes(i)[0], codes[0, y:y + 16, x:x + 24])
    patch_aligned, _ = check_windows(tmp_path, cfg, WindowSettings(size=(4, 6), per_epoch=40, align="patch"), 8, 1)
    assert all(x % 4 == 0 for _, _, x in patch_aligned.for_epoch(0).corners)
    whole, grid = check_windows(tmp_path, cfg, WindowSettings(size=None, per_epoch=8), 8, 1)  # the whole chain
    assert grid == Grid(4, 25) and {x for _, _, x in whole.for_epoch(0).corners} == {0}
    with pytest.raises(DataError, match="smaller than a window"):
        check_windows(tmp_path, cfg, WindowSettings(size=(5, 6), per_epoch=40), 8, 1)
    with pytest.raises(DataError, match="fewer than one global batch"):
        check_windows(tmp_path, cfg, WindowSettings(size=(4, 6), per_epoch=4), 8, 1)
    with pytest.raises(DataError, match="vocab_size"):
        check_windows(tmp_path, preset("tiny", vocab_size=64), WindowSettings(size=(4, 6)), 8, 1)


def test_memory_does_not_grow_with_the_length_of_the_image(tmp_path):
    cfg = preset("tiny", vocab_size=32, text_vocab_size=0)
    # Training: a window of a short and of an 8x longer image is the same grid, hence the same work.
    rng = np.random.default_rng(0)
    grids = []
    for n, length in enumerate((64, 512)):
        folder = tmp_path / f"c{n}"
        make_canvas(folder, rng.integers(0, 32, size=(1, 16, length)), (0, 0, length - 16, 16), (length - 16, 0,
                                                                                                  length, 16))
        grids.append(check_windows(folder, cfg, WindowSettings(size=(4, 8), per_epoch=8), 8, 0)[1])
    assert grids[0] == grids[1] == Grid(4, 8)
    # The whole patch chain of a long image in a column order: the pool's peak is that of a short one.
    peaks = []
    for width in (8, 64):
        grid, d = Grid(4, width), Direction.parse("down-right")
        pool = ContextPool(grid, d, cfg.expand)
        for coord in d.schedule(grid):
            pool.add(coord, [torch.zeros(1, 1, 1)])
            pool.remove(coord)
        peaks.append(pool.peak)
    assert peaks[0] == peaks[1]
    # Sampling: a given image 8x as long, continued 8x as far, holds the same bytes.
    torch.manual_seed(0)
    model = Renderer(cfg).eval()
    held = []
    for length in (16, 128):
        codes = torch.randint(0, 32, (1, 1, 16, length))
        grid, origin, direction = extension_plan((16, length), "right", length, cfg.patch)
        ledger = MemoryLedger()
        generate(model, grid, direction, CodeCollector(), given=GivenCodes(codes, origin), ledger=ledger,
                 generator=torch.Generator().manual_seed(0))
        held.append(ledger.peak)
    assert held[0] > 0 and held[1] == held[0]


# ----------------------------------------------------------------------------- continuation and copies


def test_a_code_file_is_continued_with_its_codes_unchanged(tmp_path):
    codes = np.random.default_rng(2).integers(0, 32, size=(1, 16, 40))
    c = make_canvas(tmp_path, codes, (0, 0, 32, 16), (32, 0, 40, 16))
    given = read_code_file(c.path, (64, 0, 320, 128), factor=8, vocab_size=32, where="job")  # pixels 64..320
    assert given.shape == (1, 1, 16, 32) and np.array_equal(given[0, 0].numpy(), codes[0, :, 8:40])
    torch.manual_seed(0)
    model = Renderer(preset("tiny", vocab_size=32, text_vocab_size=0)).eval()
    grid, origin, direction = extension_plan((16, 32), "left", 24, model.cfg.patch)
    out = CodeCollector()
    generate(model, grid, direction, out, given=GivenCodes(given, origin), generator=torch.Generator().manual_seed(1))
    result = out.codes()
    assert result.shape == (1, 1, 16, 56) and torch.equal(result[..., 24:], given)
    with pytest.raises(ConfigError, match="VQGAN's 8-pixel grid"):
        read_code_file(c.path, (4, 0, 64, 128), 8, 32, "job")
    with pytest.raises(ConfigError, match="codebook"):
        read_code_file(c.path, None, 8, 16, "job")


def test_copy_figures_count_verbatim_patches_and_runs(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.integers(0, 32, size=(1, 8, 64))
    make_canvas(tmp_path, source, (0, 0, 48, 8), (48, 0, 64, 8))
    cset = canvas.CanvasSet(tmp_path)
    # An extension to the right of 16 given codes: its first 12 generated columns copy training columns 5..17
    # verbatim (3 patch columns), the rest is noise.
    out = np.concatenate([source[0, :, :16], source[0, :, 5:17], rng.integers(0, 32, size=(8, 20))], axis=1)
    sidecar = {"mode": "extend", "side": "right", "given_size": [64, 128]}
    fig = analyse(out[None], sidecar, cset, (4, 4))
    assert fig["generated"]["patches"] == 16  # (8 / 4) x (32 / 4) generated patches
    assert fig["generated"]["copy_share"] == pytest.approx(6 / 16)
    assert fig["generated"]["near_copy_share"] >= 6 / 16
    assert fig["longest_copy_px"] == 12 * 8 and fig["generated_width_px"] == 32 * 8
    assert fig["holdout_baseline"]["patches"] == 8 and fig["holdout_baseline"]["copy_share"] < 0.5
    assert longest_column_copy(source[0, :, 10:30], [source[0, :, :48]], 4) == 20  # a crop of the source
    # near copies: a copied patch with 3 of its 16 codes changed is no verbatim copy, but a near one
    near = np.concatenate([source[0, :, :16], source[0, :, 5:37]], axis=1)
    near[:3, 16] = (near[:3, 16] + 1) % 32
    fig = analyse(near[None], sidecar, cset, (4, 4))
    assert fig["generated"]["copy_share"] == pytest.approx(15 / 16)
    assert fig["generated"]["near_copy_share"] == pytest.approx(1.0)


def test_after_fine_tuning_the_later_stages_load_the_fine_tuned_export(tmp_path):
    from pipeline.formats import vqgan_io

    start = tmp_path / "start.safetensors"
    vqgan_io.save_vqgan(small_vqgan(0), start)
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                        "vqgan": {"preset": "tiny_f8", "overrides": VQ, "weights": str(start)}}))
    cfg = load_config(cfg_path)
    assert vqgan_io.weights_path(cfg) == start  # stage 40 has not run: the given weights
    export = vqgan_io.export_path(cfg)
    export.parent.mkdir(parents=True)
    vqgan_io.save_vqgan(small_vqgan(1), export, extra={"steps": 3})
    assert vqgan_io.weights_path(cfg) == start  # an export that says nothing of fine-tuning is not used
    vqgan_io.save_vqgan(small_vqgan(1), export, extra={"fine_tuned_from": {"path": str(start), "sha256": "x"}})
    assert vqgan_io.weights_path(cfg) == export


def test_stage_95_runs_the_named_single_image_config_or_says_why_not(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "stages" / "95_single_image_run.sh"
    cfg = tmp_path / "run.yaml"

    def run(text):
        cfg.write_text(text)
        return subprocess.run(["bash", str(script), "--config", str(cfg)], capture_output=True, text=True,
                              timeout=120)

    off = run("run_dir: x\nsingle_image_run: null\n")
    assert off.returncode == 0 and "SKIPPED" in off.stdout
    missing = run("run_dir: x\nsingle_image_run: nowhere.yaml\n")
    assert missing.returncode == 1 and f"config file not found: {tmp_path / 'nowhere.yaml'}" in missing.stderr
    # a named config runs through run.sh's stages, and its failure is stage 95's: this one has no data, so its
    # stage 40 finds no manifest
    (tmp_path / "empty.yaml").write_text(f"run_dir: {tmp_path / 'empty'}\n")
    chained = run("run_dir: x\nsingle_image_run: empty.yaml\n")
    assert f"the single-image run of {tmp_path / 'empty.yaml'}" in chained.stdout
    assert "stage 30_caption.sh finished" in chained.stderr and "manifest missing" in chained.stderr
    assert chained.returncode != 0

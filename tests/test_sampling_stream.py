"""Streaming decode: overlapping windows, slabs in any arrival order, memmap canvases, the PNG writer."""

import numpy as np
import pytest
import torch
from PIL import Image

from model.vqgan import VQGAN, VQGANConfig
from pipeline.sampling.generate import CodeFileWriter, Slab
from pipeline.sampling.stream_decode import (
    Canvases,
    ImageStreamDecoder,
    VideoStreamDecoder,
    decode_windowed,
    remove_stale_canvases,
    to_uint8,
    windows,
    write_png,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    cfg = VQGANConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8,
                      n_embed=64, resolution=16)
    model = VQGAN(cfg).eval()
    with torch.no_grad():  # a wider codebook than the default init, so codes give visibly different pixels
        model.quantize.embedding.weight.normal_(0, 1)
    return model


def slabs_of(codes, axis, thick, order):
    """Cut codes [B, 1, h, w] into slabs along grid axis 0/1 and yield them in `order` (+1 / -1)."""
    dim = 2 if axis == 0 else 3
    n = codes.shape[dim] // thick
    for idx in (range(n) if order > 0 else reversed(range(n))):
        yield Slab(axis, idx, codes.narrow(dim, idx * thick, thick))


def test_windows_cover_the_axis_once_with_clipped_margins():
    ws = windows(10, 4, 3)
    assert [w.keep for w in ws] == [(0, 4), (4, 8), (8, 10)]
    assert [w.need for w in ws] == [(0, 7), (1, 10), (5, 10)]
    with pytest.raises(ValueError):
        windows(10, 0, 1)


@pytest.mark.parametrize("axis,order", [(1, 1), (1, -1), (0, 1), (0, -1)])
def test_streamed_png_equals_the_in_memory_windowed_decode(vq, tmp_path, axis, order):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 64, (2, 1, 8, 20), generator=g) if axis == 1 else \
        torch.randint(0, 64, (2, 1, 20, 8), generator=g)
    h, w = codes.shape[-2:]
    f = vq.downsample
    with Canvases(tmp_path, [(h * f, w * f, 3)] * 2) as canvases:
        dec = ImageStreamDecoder(vq, (h, w), canvases.arrays, axis, chunk=4, margin=3)
        for slab in slabs_of(codes, axis, 4, order):
            dec.push(slab)
            held = dec.buf.shape[axis + 1] if dec.buf is not None else 0
            assert held <= 4 + 2 * 3 + 4  # never more than a window and the slab being appended
        dec.finish()
        assert dec.windows_decoded == 5
        for b in range(2):
            write_png(tmp_path / f"{b}.png", canvases.arrays[b])
    assert not list(tmp_path.glob(".canvas-*"))  # the memmaps are gone
    expected = decode_windowed(vq, codes[:, 0], axis, chunk=4, margin=3)
    for b in range(2):
        with Image.open(tmp_path / f"{b}.png") as im:
            assert im.mode == "RGB" and im.size == (w * f, h * f)
            got = np.asarray(im)
        assert np.array_equal(got, expected[b])
    # the margin matters: windows without one decode differently (the decoder looks across the border)
    assert not np.array_equal(decode_windowed(vq, codes[:, 0], axis, chunk=4, margin=0), expected)


def test_margin_covering_the_grid_equals_decoding_in_one_go(vq, tmp_path):
    codes = torch.randint(0, 64, (1, 1, 6, 12), generator=torch.Generator().manual_seed(2))
    f = vq.downsample
    with Canvases(tmp_path, [(6 * f, 12 * f, 3)]) as canvases:
        dec = ImageStreamDecoder(vq, (6, 12), canvases.arrays, 1, chunk=4, margin=12)
        for slab in slabs_of(codes, 1, 4, 1):
            dec.push(slab)
        dec.finish()
        streamed = np.array(canvases.arrays[0])
    with torch.no_grad():
        whole = to_uint8(vq.decode_codes(codes[:, 0]))[0].numpy()
    assert np.array_equal(streamed, whole)


def test_video_frames_decode_frame_by_frame(vq, tmp_path):
    codes = torch.randint(0, 64, (1, 3, 4, 6), generator=torch.Generator().manual_seed(3))
    f = vq.downsample
    with Canvases(tmp_path, [(3, 4 * f, 6 * f, 3)]) as canvases:
        dec = VideoStreamDecoder(vq, canvases.arrays)
        for k in range(3):
            dec.push(Slab(2, k, codes[:, k:k + 1]))
        dec.finish()
        frames = np.array(canvases.arrays[0])
    with torch.no_grad():
        want = to_uint8(vq.decode_codes(codes[0])).numpy()
    assert dec.frames_written == 3 and np.array_equal(frames, want)


def test_png_writer_round_trips_any_content(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.integers(0, 3, (37, 53, 3)), axis=1).astype(np.uint8)  # favours Sub/Paeth filters
    for i, img in enumerate([rng.integers(0, 256, (23, 41, 3), dtype=np.uint8), smooth,
                             np.zeros((1, 1, 3), np.uint8)]):
        path = tmp_path / f"{i}.png"
        write_png(path, img, band_bytes=1)  # one row per band: exercises the carried-over row above
        with Image.open(path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), img)
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "bad.png", np.zeros((4, 4), np.uint8))


def test_code_files_stream_to_npy_and_stale_canvases_are_removed(tmp_path):
    codes = torch.randint(0, 300, (2, 1, 8, 12), generator=torch.Generator().manual_seed(4))
    paths = [tmp_path / "a.codes.npy", tmp_path / "b.codes.npy"]
    writer = CodeFileWriter(paths, (1, 8, 12), vocab_size=300)
    for slab in slabs_of(codes, 1, 4, -1):
        writer.push(slab)
    assert not paths[0].exists()  # only after finish()
    writer.finish()
    for b, p in enumerate(paths):
        arr = np.load(p)
        assert arr.dtype == np.int16 and np.array_equal(arr, codes[b].numpy())
    incomplete = CodeFileWriter([tmp_path / "c.codes.npy"], (1, 8, 12), vocab_size=300)
    incomplete.push(next(slabs_of(codes[:1], 1, 4, 1)))
    with pytest.raises(RuntimeError, match="1 of 3"):
        incomplete.finish()
    (tmp_path / ".canvas-x").mkdir()
    assert remove_stale_canvases(tmp_path) == 1 and not (tmp_path / ".canvas-x").exists()

"""The codes an extension starts from: a picture encoded (whole or in tiles), or a code grid read from a file.

An `extend` job's `input` is either a picture (an image file, a video's first frame, a manifest row:
pipeline.sampling.inputs.load_input), which is encoded here, or a code grid: a `.npy` (a single-image
run's canvas, run_dir/tokens/single_image/<id>.npy, pipeline.formats.canvas, or a sample's own
`<name>.codes.npy`, so an output can be continued again), or a canvas-set folder with `input_index`
naming its canvas (in id order). A code file is used as it is,
so the continuation keeps exactly the codes the model was trained on; `input_crop` (pixels) cuts a
box of it on the VQGAN's grid.

A picture larger than `encode_tile` pixels along a side is encoded tile by tile with `encode_margin`
pixels of context (model.tiles.encode_tiled), as the tokenisation stage encodes a single image: the
VQGAN's encoder attends globally, so one pass over a 2048 x 38912 image is neither affordable nor what
it was trained on. Without `encode_tile` a picture is encoded in one pass (the demo's small inputs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.tiles import encode_tiled
from pipeline.config import ConfigError


def code_file(path: Path, index: int, where: str) -> Path | None:
    """The code grid an `input` names: a `.npy` itself, or canvas number `index` of a canvas-set folder; None for
    a picture."""
    from pipeline.formats.canvas import CanvasSet, is_canvas_set
    from pipeline.formats.shards import ShardError

    if path.is_dir():
        if not is_canvas_set(path):
            raise ConfigError(f"{where}: {path} is a folder but not a canvas set (run_dir/tokens/single_image)")
        try:
            canvases = CanvasSet(path).canvases
        except ShardError as e:
            raise ConfigError(f"{where}: {e}") from e
        if not 0 <= index < len(canvases):
            raise ConfigError(f"{where}: input_index {index} outside the {len(canvases)} canvas(es) of {path}")
        return canvases[index].path
    return path if path.suffix.lower() == ".npy" else None


def read_code_file(path: Path, crop: tuple[int, int, int, int] | None, factor: int, vocab_size: int,
                   where: str) -> torch.Tensor:
    """A `.npy` code grid [f, h, w] or [h, w] (optionally cropped by a pixel box) -> codes [1, 1, h, w] int64."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{where}: {path}: not a readable .npy code grid ({e})") from e
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ConfigError(f"{where}: {path}: expected integer codes [1, h, w] or [h, w], got {arr.dtype} {arr.shape}")
    if crop is not None:
        if any(v % factor for v in crop):
            raise ConfigError(f"{where}: input_crop {list(crop)} of a code file must be on the VQGAN's "
                              f"{factor}-pixel grid")
        x0, y0, x1, y1 = (v // factor for v in crop)
        if not (0 <= x0 < x1 <= arr.shape[1] and 0 <= y0 < y1 <= arr.shape[0]):
            raise ConfigError(f"{where}: input_crop {list(crop)} is outside the {arr.shape[1] * factor} x "
                              f"{arr.shape[0] * factor} px of {path}")
        arr = arr[y0:y1, x0:x1]
    codes = torch.from_numpy(np.array(arr, dtype=np.int64))
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= vocab_size):
        raise ConfigError(f"{where}: {path}: codes outside the VQGAN's codebook [0, {vocab_size})")
    return codes[None, None]


def encode_picture(vqgan, picture: np.ndarray, tile: int | None, margin: int) -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> codes [1, 1, h, w]: in one pass, or in tiles when it is larger than `tile`."""
    if tile is None or max(picture.shape[:2]) <= tile:
        from pipeline.sampling.stream_decode import from_uint8

        device = next(vqgan.parameters()).device
        with torch.inference_mode():
            return vqgan.encode(from_uint8(picture).to(device)).cpu()[:, None]
    return encode_tiled(vqgan, picture, tile, margin)[None, None]


def check_whole_patches(h_px: int, w_px: int, patch: tuple[int, int, int], factor: int, where: str) -> None:
    hp, wp, _ = patch
    if h_px % (hp * factor) or w_px % (wp * factor):
        raise ConfigError(f"{where}: the input is {h_px} x {w_px} pixels, not whole patches of "
                          f"{hp * factor} x {wp * factor} pixels; crop it with input_crop")

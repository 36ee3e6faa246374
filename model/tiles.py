"""Overlapping windows along an axis, and encoding an image of any size with the VQGAN tile by tile.

The VQGAN's encoder and decoder attend globally over their lowest-resolution grid, so neither can
take a 2048 x 38912 image in one pass, and a pass over a whole image gives other codes than passes
over the crops it was trained on. Both directions therefore work in windows: an axis of n codes is
cut into chunks of `chunk` codes aligned at 0; chunk [a, b) is computed from the codes (or pixels)
[a - margin, b + margin) clipped to [0, n), and only its centre [a, b) is kept, so every kept code
sees `margin` codes of real context past its chunk's edge. The sampler's streaming decoder
(pipeline.sampling.stream_decode) uses these windows along one axis; `encode_tiled` uses them
along both axes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Window:
    keep: tuple[int, int]  # the codes whose values this window writes
    need: tuple[int, int]  # the codes it is computed from


def windows(n: int, chunk: int, margin: int) -> list[Window]:
    if n < 1 or chunk < 1 or margin < 0:
        raise ValueError(f"windows need n >= 1, chunk >= 1, margin >= 0; got {n}, {chunk}, {margin}")
    out = []
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        out.append(Window((a, b), (max(0, a - margin), min(n, b + margin))))
    return out


@torch.no_grad()
def encode_tiled(vqgan, image: np.ndarray, tile: int, margin: int, batch_size: int = 8) -> torch.Tensor:
    """uint8 RGB [H, W, 3] (any array, e.g. a memory map) -> codes int64 [H/f, W/f], tile by tile.

    `tile` and `margin` are in pixels, multiples of the VQGAN factor f. Tiles of the same shape are
    encoded together in batches; pixels are converted to floats one tile at a time, so memory holds
    the codes and a batch of tiles, never the whole image as floats. With a tile at least as large as
    the image this is exactly `vqgan.encode` of the whole image.
    """
    f = vqgan.downsample
    h_px, w_px = image.shape[:2]
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    if h_px % f or w_px % f:
        raise ValueError(f"image {h_px} x {w_px} px is not a multiple of the VQGAN factor {f}")
    if tile < f or tile % f or margin < 0 or margin % f:
        raise ValueError(f"tile ({tile}) and margin ({margin}) must be multiples of the VQGAN factor {f}, tile >= {f}")
    device = next(vqgan.parameters()).device
    h, w = h_px // f, w_px // f
    codes = torch.empty(h, w, dtype=torch.long)
    groups: dict[tuple[int, int], list[tuple[Window, Window]]] = {}
    for rw in windows(h, tile // f, margin // f):
        for cw in windows(w, tile // f, margin // f):
            shape = (rw.need[1] - rw.need[0], cw.need[1] - cw.need[0])
            groups.setdefault(shape, []).append((rw, cw))
    for tiles in groups.values():
        for start in range(0, len(tiles), batch_size):
            part = tiles[start:start + batch_size]
            x = np.stack([image[rw.need[0] * f: rw.need[1] * f, cw.need[0] * f: cw.need[1] * f] for rw, cw in part])
            x = torch.from_numpy(x).to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
            out = vqgan.encode(x).cpu()
            for (rw, cw), c in zip(part, out):
                r0, c0 = rw.keep[0] - rw.need[0], cw.keep[0] - cw.need[0]
                codes[rw.keep[0]:rw.keep[1], cw.keep[0]:cw.keep[1]] = \
                    c[r0:r0 + rw.keep[1] - rw.keep[0], c0:c0 + cw.keep[1] - cw.keep[0]]
    return codes

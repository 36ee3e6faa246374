"""Block-FID's blocks (paper 4.1): square crops of a large image, taken at a fixed stride.

The paper splits a large image into 256x256 blocks and, because rendering windows and blocks
may line up, moves by half a block (stride 128). It does not say what happens when the image
side minus the block is not a multiple of the stride; here one more block is placed flush with
the far edge so that every pixel is covered (for the paper's sizes this never triggers:
1024x1024 gives 7x7 = 49 blocks and 1024x4096 gives 7x31 = 217). An image smaller than one
block in either direction has no blocks and is an error (resizing it would defeat the point of
the metric, which is to avoid resampling).

Blocks are returned as views into the image array: extracting the 217 blocks of a 1024x4096
image copies nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def block_offsets(length: int, block: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, s, 2s, ... and, if needed, one flush with the end."""
    if block <= 0 or stride <= 0:
        raise ValueError(f"block size and stride must be positive, got {block} and {stride}")
    if length < block:
        raise ValueError(f"an axis of {length} pixels is shorter than one {block}-pixel block")
    offsets = list(range(0, length - block + 1, stride))
    if offsets[-1] + block < length:
        offsets.append(length - block)
    return offsets


def block_grid(height: int, width: int, block: int, stride: int) -> list[tuple[int, int]]:
    """(y, x) top-left corners of every block of an image, row by row."""
    return [(y, x) for y in block_offsets(height, block, stride) for x in block_offsets(width, block, stride)]


def count_blocks(height: int, width: int, block: int, stride: int) -> int:
    return len(block_offsets(height, block, stride)) * len(block_offsets(width, block, stride))


def iter_blocks(image: np.ndarray, block: int, stride: int) -> Iterator[np.ndarray]:
    """Views [block, block, C] (or [block, block]) of an image [H, W, C] / [H, W]."""
    if image.ndim not in (2, 3):
        raise ValueError(f"expected an image [H, W] or [H, W, C], got shape {image.shape}")
    h, w = image.shape[:2]
    for y, x in block_grid(h, w, block, stride):
        yield image[y:y + block, x:x + block]

"""Cutting a code grid into patches and putting patches back.

Codes of one item are [f, h, w]; a batch is [B, f, h, w]. A patch is (h_p, w_p, f_p) codes and
is flattened frame-major, then row-major, then column (the (f, h, w) order), which the
renderer's axial positions assume.
"""

from __future__ import annotations

import torch

from model.directions import Grid


def patch_grid(codes_shape: tuple[int, ...], patch: tuple[int, int, int]) -> Grid:
    """The patch grid of codes shaped [..., f, h, w]; an error names the sizes when it does not divide."""
    f, h, w = codes_shape[-3:]
    hp, wp, fp = patch
    if h % hp or w % wp or f % fp:
        raise ValueError(f"code grid f x h x w = {f} x {h} x {w} does not divide into patches of "
                         f"h_p x w_p x f_p = {hp} x {wp} x {fp}")
    return Grid(H=h // hp, W=w // wp, F=f // fp)


def _slices(coord: tuple[int, int, int], patch: tuple[int, int, int]):
    i, j, k = coord
    hp, wp, fp = patch
    return slice(k * fp, (k + 1) * fp), slice(i * hp, (i + 1) * hp), slice(j * wp, (j + 1) * wp)


def get_patch(codes: torch.Tensor, coord: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, f, h, w] -> the patch at coord as [B, T]."""
    fs, hs, ws = _slices(coord, patch)
    return codes[:, fs, hs, ws].reshape(codes.shape[0], -1)


def put_patch(codes: torch.Tensor, coord: tuple[int, int, int], patch: tuple[int, int, int],
              tokens: torch.Tensor) -> None:
    """Write tokens [B, T] into codes [B, f, h, w] at coord, in place."""
    fs, hs, ws = _slices(coord, patch)
    hp, wp, fp = patch
    codes[:, fs, hs, ws] = tokens.reshape(codes.shape[0], fp, hp, wp).to(codes.dtype)

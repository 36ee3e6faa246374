"""Decode code slabs to pixels as they are generated, in overlapping windows, straight to disk.

Windows (the overlap semantics, model.tiles): the code axis the slabs arrive along (columns for a column
order, rows for a row order) of length n is cut into chunks of `chunk` codes aligned at 0 (the
sampler's slab thickness, one patch, by default). Chunk [a, b) is decoded from the codes
[a - margin, b + margin) clipped to [0, n), with every code of the other axis, and only its
centre [a, b) is kept. Decoding each patch alone would leave seams at patch borders (the
decoder's convolutions see zero padding there, and its attention sees only the patch); with the
margin each kept pixel sees `margin` real codes past its chunk's edge. `decode_windowed` is the
same computation in memory; the streamed image equals it exactly, and with margin >= n every
window is the whole grid and both equal a decode in one go.

What stays in memory: the codes of the windows still to decode (at most chunk + 2 * margin
codes along the axis, plus the slab being appended) and one decoded window. Pixels go to a
disk-backed uint8 memmap per image (`Canvases`), and `write_png` streams a memmap into a PNG a
band of rows at a time (zlib, row filters chosen per row by the usual minimum-sum-of-absolute-
differences heuristic), so neither the codes nor the image is ever whole in RAM. Video frames
(slabs along frames) are decoded frame by frame, as the VQGAN encodes them.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from model.tiles import Window, windows
from pipeline import atomic
from pipeline.sampling.generate import MemoryLedger, Slab

CANVAS_PREFIX = ".canvas-"


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Decoder output [B, 3, H, W] (about [-1, 1]) -> uint8 [B, H, W, 3]."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def from_uint8(rgb: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1] (the VQGAN's input range)."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float().div(127.5).sub(1)


def _decode_window(vqgan, codes: torch.Tensor, dim: int, w: Window, ledger: MemoryLedger | None = None,
                   held: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Decode codes [B, h, n_window] (window w.need along `dim`) and keep w.keep: uint8 [B, H, W, 3].

    With a ledger, the decoded window (float and uint8) is counted beside `held` (the decoder's codes).
    """
    f = vqgan.downsample
    device = next(vqgan.parameters()).device
    with torch.inference_mode():
        decoded = vqgan.decode_codes(codes.to(device))
        pixels = to_uint8(decoded)
    if ledger is not None:
        ledger.track("decoder_codes", held or [])
        ledger.track("decoder_pixels", [decoded, pixels])
        ledger.observe()
        ledger.track("decoder_pixels", [])
    del decoded
    lo, hi = (w.keep[0] - w.need[0]) * f, (w.keep[1] - w.need[0]) * f
    return pixels[:, lo:hi] if dim == 1 else pixels[:, :, lo:hi]


def decode_windowed(vqgan, codes: torch.Tensor, axis: int, chunk: int, margin: int) -> np.ndarray:
    """In-memory reference: codes [B, h, w] -> uint8 [B, H, W, 3] with the streaming windows."""
    dim = axis + 1  # grid axis 0 (rows) is dim 1 of [B, h, w], axis 1 (columns) dim 2
    parts = []
    for w in windows(codes.shape[dim], chunk, margin):
        piece = codes.narrow(dim, w.need[0], w.need[1] - w.need[0])
        parts.append(_decode_window(vqgan, piece, dim, w).cpu())
    return torch.cat(parts, dim=dim).numpy()


class ImageStreamDecoder:
    """A SlabConsumer for images: code slabs along rows (axis 0) or columns (axis 1) -> canvases.

    Slabs may arrive in either direction along the axis (left-growing orders send the rightmost
    column first) but must be contiguous.
    """

    def __init__(self, vqgan, code_hw: tuple[int, int], canvases: list[np.ndarray], axis: int, chunk: int,
                 margin: int, ledger: MemoryLedger | None = None):
        if axis not in (0, 1):
            raise ValueError(f"image slabs run along rows (0) or columns (1), got axis {axis}")
        f = vqgan.downsample
        want = (code_hw[0] * f, code_hw[1] * f, 3)
        for c in canvases:
            if tuple(c.shape) != want or c.dtype != np.uint8:
                raise ValueError(f"a canvas must be uint8 {want} for {code_hw} codes, got {c.dtype} {c.shape}")
        self.vqgan, self.code_hw, self.canvases, self.axis = vqgan, code_hw, canvases, axis
        self.dim = axis + 1
        self.pending = windows(code_hw[axis], chunk, margin)
        self.buf: torch.Tensor | None = None
        self.lo = self.hi = 0
        self.ledger = ledger
        self.windows_decoded = 0

    def live_tensors(self) -> list[torch.Tensor]:
        return [] if self.buf is None else [self.buf]

    def push(self, slab: Slab) -> None:
        if slab.axis != self.axis or slab.codes.shape[1] != 1:
            raise ValueError(f"expected image slabs along axis {self.axis}, got axis {slab.axis} with "
                             f"{slab.codes.shape[1]} frames")
        codes = slab.codes[:, 0]
        lo, hi = slab.code_range()
        if self.buf is None:
            self.buf, self.lo, self.hi = codes, lo, hi
        elif lo == self.hi:
            self.buf, self.hi = torch.cat([self.buf, codes], dim=self.dim), hi
        elif hi == self.lo:
            self.buf, self.lo = torch.cat([codes, self.buf], dim=self.dim), lo
        else:
            raise ValueError(f"slab [{lo}, {hi}) is not next to the buffered codes [{self.lo}, {self.hi})")
        self._decode_ready()

    def _decode_ready(self) -> None:
        for w in [w for w in self.pending if self.lo <= w.need[0] and w.need[1] <= self.hi]:
            piece = self.buf.narrow(self.dim, w.need[0] - self.lo, w.need[1] - w.need[0])
            pixels = _decode_window(self.vqgan, piece, self.dim, w, self.ledger, self.live_tensors())
            f = self.vqgan.downsample
            px = slice(w.keep[0] * f, w.keep[1] * f)
            host = pixels.cpu().numpy()
            for b, canvas in enumerate(self.canvases):
                if self.axis == 0:
                    canvas[px] = host[b]
                else:
                    canvas[:, px] = host[b]
            self.pending.remove(w)
            self.windows_decoded += 1
        # drop the codes no remaining window needs
        if not self.pending:
            self.buf = None
        else:
            keep_lo = max(self.lo, min(w.need[0] for w in self.pending))
            keep_hi = min(self.hi, max(w.need[1] for w in self.pending))
            if keep_hi <= keep_lo:
                self.buf = None
                self.lo = self.hi = 0
            elif (keep_lo, keep_hi) != (self.lo, self.hi):
                self.buf = self.buf.narrow(self.dim, keep_lo - self.lo, keep_hi - keep_lo).clone()
                self.lo, self.hi = keep_lo, keep_hi
        if self.ledger is not None:
            self.ledger.track("decoder_codes", self.live_tensors())

    def finish(self) -> None:
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} decode windows never got their codes "
                               f"(first needs codes {self.pending[0].need} along axis {self.axis})")
        for c in self.canvases:
            if isinstance(c, np.memmap):
                c.flush()


class VideoStreamDecoder:
    """A SlabConsumer for clips: slabs along frames -> canvases [T, H, W, 3], frame by frame."""

    def __init__(self, vqgan, canvases: list[np.ndarray], ledger: MemoryLedger | None = None):
        self.vqgan, self.canvases, self.ledger = vqgan, canvases, ledger
        self.frames_written = 0

    def push(self, slab: Slab) -> None:
        if slab.axis != 2:
            raise ValueError(f"video slabs must run along frames (axis 2), got axis {slab.axis}")
        b, fp, h, w = slab.codes.shape
        device = next(self.vqgan.parameters()).device
        with torch.inference_mode():
            decoded = self.vqgan.decode_codes(slab.codes.reshape(b * fp, h, w).to(device))
            pixels = to_uint8(decoded)
        if self.ledger is not None:
            self.ledger.track("decoder_pixels", [decoded, pixels])
            self.ledger.observe()
            self.ledger.track("decoder_pixels", [])
        del decoded
        host = pixels.cpu().numpy().reshape(b, fp, *pixels.shape[1:])
        lo, hi = slab.code_range()
        for i, canvas in enumerate(self.canvases):
            canvas[lo:hi] = host[i]
        self.frames_written += fp

    def finish(self) -> None:
        for c in self.canvases:
            if isinstance(c, np.memmap):
                c.flush()


class Canvases:
    """Disk-backed uint8 memmaps in a hidden temporary folder of `folder`, removed on exit."""

    def __init__(self, folder: str | Path, shapes: list[tuple[int, ...]]):
        self.folder, self.shapes = Path(folder), shapes
        self.tmp: Path | None = None
        self.arrays: list[np.memmap] = []

    def __enter__(self) -> Canvases:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=CANVAS_PREFIX, dir=self.folder))
        for i, shape in enumerate(self.shapes):
            self.arrays.append(np.lib.format.open_memmap(self.tmp / f"{i}.npy", mode="w+", dtype=np.uint8,
                                                         shape=tuple(shape)))
        return self

    def __exit__(self, *exc) -> None:
        # The mappings close when the last reference goes; on POSIX the files can go first.
        self.arrays = []
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def remove_stale_canvases(folder: str | Path) -> int:
    """Delete canvas folders a killed run left behind; returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(CANVAS_PREFIX + "*"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


# ------------------------------------------------------------------------------ streaming PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _filtered(rows: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """PNG-filter rows [n, W*3] (prev: the row above the first, zeros at the top): [n, 1 + W*3]."""
    x = rows.astype(np.int16)
    up = np.concatenate([prev[None].astype(np.int16), x[:-1]], axis=0)
    left = np.zeros_like(x)
    left[:, 3:] = x[:, :-3]
    upleft = np.zeros_like(x)
    upleft[:, 3:] = up[:, :-3]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    cands = np.stack([x, x - left, x - up, x - ((left + up) >> 1), x - paeth]).astype(np.uint8)  # mod 256
    score = np.abs(cands.view(np.int8).astype(np.int32)).sum(axis=2)  # [5, n]
    choice = score.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = choice
    out[:, 1:] = cands[choice, np.arange(rows.shape[0])]
    return out


def write_png(path: str | Path, image: np.ndarray, level: int = 6, band_bytes: int = 4 << 20) -> None:
    """Write uint8 RGB [H, W, 3] (e.g. a memmap) as a PNG, a band of rows at a time, atomically."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: a PNG needs uint8 [H, W, 3], got {image.dtype} {image.shape}")
    h, w, _ = image.shape
    if not (1 <= h < 2**31 and 1 <= w < 2**31):
        raise ValueError(f"{path}: PNG sides must be 1 .. 2^31-1, got {h} x {w}")
    band = max(1, band_bytes // (w * 3 * 2 * 6))  # the filter candidates are the big temporaries
    comp = zlib.compressobj(level)
    prev = np.zeros(w * 3, dtype=np.uint8)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        for top in range(0, h, band):
            rows = np.ascontiguousarray(image[top:top + band]).reshape(-1, w * 3)
            data = comp.compress(_filtered(rows, prev).tobytes())
            prev = rows[-1].copy()
            if data:
                f.write(_chunk(b"IDAT", data))
        f.write(_chunk(b"IDAT", comp.flush()))
        f.write(_chunk(b"IEND", b""))

"""Algorithm 2 of the paper: generate a code grid of any size, patch by patch, in any direction.

For each patch in the direction's order: select its context from the nearby context pool, render
it (or, for a patch whose codes are given, run it teacher-forced to get its states), add its
states to the pool, remove the expired ones. AR / NAR / P-NAR, temperature, top-k, top-p, P-NAR
steps and annealing and classifier-free guidance all come through `model.config.SamplingConfig`
and the renderer; randomness comes from one `torch.Generator`.

Streaming (the choices the paper leaves open):
* The renderer never reads codes of earlier patches, only their pool states, so a patch's codes
  are final once drawn. The grid is cut into *slabs*: one patch thick along the direction's
  slowest axis whose size is > 1 (columns for Down-Right / Down-Left images, rows for Right-Down /
  Right-Up, frames for a video whose frames are slowest). The patches of one slab are consecutive
  in the order, so exactly one slab of codes is ever being filled; when its last patch is drawn
  it goes to a `SlabConsumer` (e.g. `pipeline.sampling.stream_decode`) and is dropped here.
  In a column order nothing held grows with the width: the pool keeps about e_w + 1 columns of
  states and the sampler one column of codes. In a row order both grow with the width (they
  are bounded by the height instead); that is why wide panoramas use a column order.
* Given codes (extension, image-to-video) are a box of whole patches, `GivenCodes`. The caller
  picks a direction in which all of them come first (model.directions.direction_for_extension),
  so the pool is primed teacher-forced before the first patch is drawn; their codes are passed
  through to the output unchanged.
* Classifier-free guidance: the pool and the captions hold [cond; uncond] rows, the uncond
  captions being all padding with masks all False (the renderer's "dropped text").
* Memory accounting (`MemoryLedger`) counts the bytes of the storage of every tensor the sampler
  and its consumer hold (pool states, the current patch's context, the slab being filled, the
  decoder's code and pixel windows), computed from the live tensors at each patch, and keeps the
  peak. The renderer's per-patch transients (activations, the AR key/value cache) are not in it;
  they depend on the patch and context size only, never on the grid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from model.config import SamplingConfig
from model.directions import Direction, Grid, direction_for_extension
from model.patches import get_patch, put_patch
from model.pool import ContextPool
from model.renderer import Renderer

Coord = tuple[int, int, int]
# Patch-grid axis (0 rows, 1 columns, 2 frames) -> dimension of a code tensor [B, f, h, w].
CODE_DIM = {0: 2, 1: 3, 2: 1}
SIDES = ("right", "left", "down", "up")


# ------------------------------------------------------------------------------ memory accounting


class MemoryLedger:
    """Bytes held in named groups of live tensors; `observe()` records the peak of the total.

    Each tensor counts the storage it keeps alive (a view keeps its whole base), and a storage
    shared by several tensors or groups counts once.
    """

    def __init__(self):
        self.groups: dict[str, list[torch.Tensor]] = {}
        self.peak = 0
        self.peak_breakdown: dict[str, int] = {}
        self.group_peaks: dict[str, int] = {}

    def track(self, name: str, tensors: Iterable[torch.Tensor]) -> None:
        self.groups[name] = [t for t in tensors if t is not None]

    def observe(self) -> int:
        seen: set[tuple[str, int]] = set()
        by_group: dict[str, int] = {}
        for name, tensors in self.groups.items():
            n = 0
            for t in tensors:
                storage = t.untyped_storage()
                key = (str(t.device), storage.data_ptr())
                if key in seen:
                    continue
                seen.add(key)
                n += storage.nbytes()
            by_group[name] = n
            self.group_peaks[name] = max(self.group_peaks.get(name, 0), n)
        total = sum(by_group.values())
        if total > self.peak:
            self.peak, self.peak_breakdown = total, by_group
        return total

    def report(self) -> dict:
        return {"peak_bytes": self.peak, "at_peak": dict(self.peak_breakdown), "group_peaks": dict(self.group_peaks)}


# ------------------------------------------------------------------------------ slabs and consumers


@dataclass
class Slab:
    """Final codes of one slab: one patch thick along `axis`, the whole grid along the others."""

    axis: int  # patch-grid axis: 0 rows, 1 columns, 2 frames
    index: int  # patch index along `axis`
    codes: torch.Tensor  # [B, f, h, w]; along `axis` only this slab's extent

    def code_range(self) -> tuple[int, int]:
        """[start, stop) of this slab in code units along its axis."""
        size = self.codes.shape[CODE_DIM[self.axis]]
        return self.index * size, (self.index + 1) * size


class SlabConsumer(Protocol):
    def push(self, slab: Slab) -> None: ...


class CodeCollector:
    """A consumer that assembles the whole code grid in memory (tests, small outputs, code dumps)."""

    def __init__(self):
        self.slabs: list[Slab] = []

    def push(self, slab: Slab) -> None:
        self.slabs.append(Slab(slab.axis, slab.index, slab.codes.detach().cpu()))

    def codes(self) -> torch.Tensor:
        if not self.slabs:
            raise ValueError("no slab was generated")
        ordered = sorted(self.slabs, key=lambda s: s.index)
        return torch.cat([s.codes for s in ordered], dim=CODE_DIM[ordered[0].axis])


class CodeFileWriter:
    """A consumer that streams the codes to `.npy` files [f, h, w] (one per batch row) on disk.

    The files are memmaps under temporary names, renamed into place by `finish()` once every
    slab has arrived; int16 when the codebook fits, else int32. `pipeline.tokens.decode --codes` reads them.
    """

    def __init__(self, paths: list[Path], code_shape: tuple[int, int, int], vocab_size: int):
        self.paths = [Path(p) for p in paths]
        self.code_shape = tuple(code_shape)
        dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
        self.tmp = [p.with_name(f".{p.name}.tmp") for p in self.paths]
        self.arrays = []
        for t in self.tmp:
            t.parent.mkdir(parents=True, exist_ok=True)
            self.arrays.append(np.lib.format.open_memmap(t, mode="w+", dtype=dtype, shape=self.code_shape))
        self.covered: set[int] = set()  # slab indices received (a few ints per slab, not codes)
        self.expected: int | None = None

    def push(self, slab: Slab) -> None:
        lo, hi = slab.code_range()
        index = [slice(None)] * 3
        index[CODE_DIM[slab.axis] - 1] = slice(lo, hi)
        host = slab.codes.cpu().numpy()
        if (host < 0).any():
            raise RuntimeError(f"{self.paths[0]}: slab {slab.index} has codes that were never drawn")
        for b, arr in enumerate(self.arrays):
            arr[tuple(index)] = host[b]
        self.covered.add(slab.index)
        self.expected = self.code_shape[CODE_DIM[slab.axis] - 1] // (hi - lo)

    def finish(self) -> None:
        if self.expected is None or len(self.covered) != self.expected:
            raise RuntimeError(f"{self.paths[0]}: {len(self.covered)} of {self.expected} code slabs arrived")
        for arr, tmp, final in zip(self.arrays, self.tmp, self.paths):
            arr.flush()
            os.replace(tmp, final)
        self.arrays = []


class Tee:
    """Hands every slab to several consumers."""

    def __init__(self, *consumers: SlabConsumer):
        self.consumers = consumers

    def push(self, slab: Slab) -> None:
        for c in self.consumers:
            c.push(slab)


def slab_axis(direction: Direction, grid: Grid) -> int:
    """The slowest axis of `direction` along which the grid has more than one patch.

    (A single-patch grid takes the slowest spatial axis.)
    """
    for axis, _ in reversed(direction.axes):
        if grid.size[axis] > 1:
            return axis
    return [a for a, _ in direction.axes if a != 2][-1]


# ------------------------------------------------------------------------------ given codes


@dataclass
class GivenCodes:
    """Known codes [B, f, h, w] covering a box of whole patches whose first patch is `origin`."""

    codes: torch.Tensor
    origin: Coord = (0, 0, 0)

    def box(self, patch: tuple[int, int, int]) -> Grid:
        hp, wp, fp = patch
        f, h, w = self.codes.shape[-3:]
        if self.codes.dim() != 4 or h % hp or w % wp or f % fp:
            raise ValueError(f"given codes must be [B, f, h, w] in whole patches of h_p x w_p x f_p = "
                             f"{hp} x {wp} x {fp}, got {tuple(self.codes.shape)}")
        return Grid(h // hp, w // wp, f // fp)

    def contains(self, coord: Coord, patch: tuple[int, int, int]) -> bool:
        size = self.box(patch).size
        return all(o <= c < o + s for c, o, s in zip(coord, self.origin, size))

    def tokens(self, coord: Coord, patch: tuple[int, int, int]) -> torch.Tensor:
        local = tuple(c - o for c, o in zip(coord, self.origin))
        return get_patch(self.codes, local, patch)  # type: ignore[arg-type]


def extension_plan(given_hw: tuple[int, int], side: str, amount: int,
                   patch: tuple[int, int, int]) -> tuple[Grid, Coord, Direction]:
    """The enlarged patch grid, where the given patches sit in it, and the order that grows it.

    `given_hw` is the given image's code grid (h, w) and `amount` the codes to add on `side`;
    both must be whole patches. The direction (model.directions.direction_for_extension) puts
    every given patch before every new one, so the pool is primed before generation starts.
    """
    hp, wp, _ = patch
    h, w = given_hw
    if h % hp or w % wp:
        raise ValueError(f"the given image is {h} x {w} codes, not whole patches of {hp} x {wp} codes")
    direction = direction_for_extension(side)
    step = wp if side in ("right", "left") else hp
    if amount <= 0 or amount % step:
        raise ValueError(f"extension amount must be a positive multiple of the patch ({step} codes), got {amount}")
    H, W = h // hp, w // wp
    n = amount // step
    if side == "right":
        return Grid(H, W + n), (0, 0, 0), direction
    if side == "left":
        return Grid(H, W + n), (0, n, 0), direction
    if side == "down":
        return Grid(H + n, W), (0, 0, 0), direction
    return Grid(H + n, W), (n, 0, 0), direction


# ------------------------------------------------------------------------------ generation


@dataclass
class GenerationStats:
    grid: tuple[int, int, int]
    direction: str
    slab_axis: int
    patches_primed: int = 0
    patches_generated: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0
    pool_peak_patches: int = 0
    memory: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "direction": self.direction, "slab_axis": self.slab_axis,
                "patches_primed": self.patches_primed, "patches_generated": self.patches_generated,
                "tokens_generated": self.tokens_generated, "seconds": round(self.seconds, 4),
                "pool_peak_patches": self.pool_peak_patches, "memory": self.memory}


def guidance_captions(text_ids: torch.Tensor | None, text_mask: torch.Tensor | None, cfg_scale: float):
    """Captions as the renderer wants them: [cond; uncond] rows under guidance, else unchanged."""
    if cfg_scale == 1.0:
        return text_ids, text_mask
    if text_ids is None:
        raise ValueError("classifier-free guidance (cfg_scale != 1) needs a prompt to guide towards")
    if text_mask is None:
        text_mask = text_ids != 0
    return (torch.cat([text_ids, torch.zeros_like(text_ids)]),
            torch.cat([text_mask, torch.zeros_like(text_mask, dtype=torch.bool)]))


def generate(renderer: Renderer, grid: Grid, direction: Direction | str, consumer: SlabConsumer, *,
             text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None, batch: int | None = None,
             sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
             given: GivenCodes | None = None, use_cache: bool = True, ledger: MemoryLedger | None = None,
             progress: bool = False, desc: str = "patches") -> GenerationStats:
    """Fill `grid` in `direction` and hand each finished slab of codes to `consumer`.

    `text_ids`/`text_mask` are [B, Lt] (cond rows only; the uncond rows are built here when
    sampling.cfg_scale != 1); `batch` gives B for a model or call without captions.
    """
    cfg = renderer.cfg
    sampling = sampling or SamplingConfig()
    direction = Direction.parse(direction)
    device = next(renderer.parameters()).device
    if text_ids is not None and not cfg.has_text:
        raise ValueError("this renderer was built without text (text_vocab_size = 0) but a prompt was given")
    rows = text_ids.shape[0] if text_ids is not None else (batch or 1)
    if batch is not None and batch != rows:
        raise ValueError(f"batch {batch} does not match the {rows} caption rows")
    if given is not None:
        if given.codes.shape[0] != rows:
            raise ValueError(f"given codes have {given.codes.shape[0]} rows, the batch has {rows}")
        box = given.box(cfg.patch)
        if any(o < 0 or o + s > g for o, s, g in zip(given.origin, box.size, grid.size)):
            raise ValueError(f"given patches {box.size} at {given.origin} do not fit in the grid {grid.size}")
        given = GivenCodes(given.codes.to(device=device, dtype=torch.long), given.origin)
    ids, mask = guidance_captions(text_ids, text_mask, sampling.cfg_scale)
    if ids is not None:
        ids = ids.to(device)
        mask = mask.to(device) if mask is not None else None
    guided = sampling.cfg_scale != 1.0

    axis = slab_axis(direction, grid)
    per_slab = len(grid) // grid.size[axis]
    hp, wp, fp = cfg.patch
    slab_shape = [rows, grid.F * fp, grid.H * hp, grid.W * wp]
    slab_shape[CODE_DIM[axis]] = cfg.patch[axis]  # patch is (h_p, w_p, f_p): indexed by grid axis
    pool = ContextPool(grid, direction, cfg.expand)
    held: dict[Coord, list[torch.Tensor]] = {}  # the pool's tensors, for the ledger
    ledger = ledger if ledger is not None else MemoryLedger()
    stats = GenerationStats(grid.size, direction.name, axis)
    slab, filled = None, 0
    start = time.perf_counter()
    bar = tqdm(total=len(grid), desc=desc, unit="patch", disable=not progress, leave=False)
    for n in range(len(grid)):  # coordinates one at a time: no list that grows with the grid
        coord = direction.coords(n, grid)
        ctx = pool.context(coord, device)
        if given is not None and given.contains(coord, cfg.patch):
            tokens = given.tokens(coord, cfg.patch)
            states = renderer.states_for(torch.cat([tokens, tokens]) if guided else tokens, ctx, ids, mask,
                                         direction=direction)
            stats.patches_primed += 1
        else:
            tokens, states = renderer.render(ctx, ids, mask, sampling, generator, batch=rows, use_cache=use_cache,
                                            direction=direction)
            stats.patches_generated += 1
            stats.tokens_generated += tokens.numel()
        if slab is None:
            slab = torch.full(slab_shape, -1, dtype=torch.long, device=device)  # -1: not drawn yet
        local = list(coord)
        local[axis] = 0
        put_patch(slab, tuple(local), cfg.patch, tokens)  # type: ignore[arg-type]
        pool.add(coord, states)
        held[coord] = states
        ledger.track("pool", (t for s in held.values() for t in s))
        ledger.track("context", ctx.states or [])
        ledger.track("slab", [slab])
        ledger.observe()
        for gone in pool.remove(coord):
            held.pop(gone, None)
        del ctx, states
        filled += 1
        if filled == per_slab:
            consumer.push(Slab(axis, coord[axis], slab))
            slab, filled = None, 0
            ledger.track("slab", [])
        bar.update(1)
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.seconds = time.perf_counter() - start
    stats.pool_peak_patches = pool.peak
    stats.memory = ledger.report()
    pool.clear()
    return stats

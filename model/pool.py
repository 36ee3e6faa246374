"""The nearby context pool (paper section 3.1.2): select (eq. 2), add (eq. 3), remove (eq. 4).

One pool serves a batch of items that share a patch grid. For each rendered patch it keeps the
per-layer states the renderer returned (layer inputs of the patch's real tokens, detached).

Remove, generalised to every direction: patch p' may be selected by exactly the patches in the
box |i-i'| <= e_h, |j-j'| <= e_w, |k-k'| <= e_f (clipped to the grid). Because T is monotone in
every coordinate (model.directions), the last of them in generation order is one corner of that
box, so p' expires at `T(corner)`: once the patch with that order has been rendered no later
patch can select p'. For Down-Right-Forward this is the paper's eq. 4. The pool therefore never
holds more than what the window can still reach: about (e_w + 1) columns in a column order and
(e_h + 1) rows in a row order, whatever the grid's length along the slow axis.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass

import torch

from model.directions import Direction, Grid

Coord = tuple[int, int, int]


def offset_index(delta: Coord, expand: Coord) -> int:
    """Index into the relative-position table for patch offset `delta` (clipped to the window)."""
    eh, ew, ef = expand
    di = max(-eh, min(eh, delta[0]))
    dj = max(-ew, min(ew, delta[1]))
    dk = max(-ef, min(ef, delta[2]))
    return ((di + eh) * (2 * ew + 1) + (dj + ew)) * (2 * ef + 1) + (dk + ef)


def num_offsets(expand: Coord) -> int:
    eh, ew, ef = expand
    return (2 * eh + 1) * (2 * ew + 1) * (2 * ef + 1)


@functools.lru_cache(maxsize=256)
def _offsets(idx: tuple[int, ...], tokens: int, device: torch.device) -> torch.Tensor:
    """Each context token's offset index on `device`, made once per window pattern: a grid has few of
    them, and a fresh host-to-device copy every patch would wait for the device (a pageable copy
    synchronises its stream). Read-only: callers only index with it."""
    return torch.tensor(idx, dtype=torch.long).repeat_interleave(tokens).to(device)


@dataclass
class Context:
    """What a patch sees: per-layer context states and each context token's offset index.

    `states[l]` is [B, S, D] (S = context patches x tokens per patch) or the pool is empty and
    `states` is None. `offsets` is a LongTensor [S] of relative-position indices.
    """

    states: list[torch.Tensor] | None
    offsets: torch.Tensor
    patches: tuple[Coord, ...] = ()

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Context:
        return cls(states=None, offsets=torch.zeros(0, dtype=torch.long, device=device))

    @property
    def length(self) -> int:
        return 0 if self.states is None else self.states[0].shape[1]

    def repeat_batch(self, n: int) -> Context:
        """The same context for a batch n times larger (e.g. cond + uncond streams)."""
        if self.states is None:
            return self
        return Context([s.repeat(n, 1, 1) for s in self.states], self.offsets, self.patches)


class ContextPool:
    def __init__(self, grid: Grid, direction: Direction | str, expand: Coord):
        if any(e < 0 for e in expand):
            raise ValueError(f"expansion sizes must be >= 0, got {expand}")
        self.grid = grid
        self.direction = Direction.parse(direction)
        self.expand = tuple(expand)
        self._states: dict[Coord, list[torch.Tensor]] = {}
        self._expiry: list[tuple[int, Coord]] = []  # min-heap of (expiry order, coord)
        self.peak = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, coord: Coord) -> bool:
        return coord in self._states

    @property
    def held(self) -> list[Coord]:
        return sorted(self._states, key=lambda c: self.direction.order(*c, self.grid))

    def _window(self, coord: Coord) -> tuple[Coord, Coord]:
        lo = tuple(max(0, c - e) for c, e in zip(coord, self.expand))
        hi = tuple(min(s - 1, c + e) for c, e, s in zip(coord, self.expand, self.grid.size))
        return lo, hi  # type: ignore[return-value]

    def expiry(self, coord: Coord) -> int:
        """The order of the last patch that can still select `coord`."""
        lo, hi = self._window(coord)
        return self.direction.order(*self.direction.last_corner(lo, hi), self.grid)

    def select(self, coord: Coord) -> list[Coord]:
        """Eq. 2: the stored patches inside coord's window that come before it, in order."""
        n = self.direction.order(*coord, self.grid)
        lo, hi = self._window(coord)
        found = []
        for i in range(lo[0], hi[0] + 1):
            for j in range(lo[1], hi[1] + 1):
                for k in range(lo[2], hi[2] + 1):
                    c = (i, j, k)
                    if c in self._states:
                        t = self.direction.order(i, j, k, self.grid)
                        if t < n:
                            found.append((t, c))
        return [c for _, c in sorted(found)]

    def context(self, coord: Coord, device: torch.device | str | None = None) -> Context:
        """The selected patches' states, concatenated per layer, with their offset indices."""
        chosen = self.select(coord)
        if not chosen:
            dev = device if device is not None else "cpu"
            return Context.empty(dev)
        layers = len(self._states[chosen[0]])
        states = [torch.cat([self._states[c][l] for c in chosen], dim=1) for l in range(layers)]
        tokens = states[0].shape[1] // len(chosen)
        idx = tuple(offset_index(tuple(a - b for a, b in zip(c, coord)), self.expand) for c in chosen)
        return Context(states=states, offsets=_offsets(idx, tokens, states[0].device), patches=tuple(chosen))

    def add(self, coord: Coord, states: list[torch.Tensor]) -> None:
        """Eq. 3. States are stored detached: the gradient of a later patch stops at the pool."""
        if coord in self._states:
            raise KeyError(f"patch {coord} is already in the pool")
        self._states[coord] = [s.detach() for s in states]
        heapq.heappush(self._expiry, (self.expiry(coord), coord))
        self.peak = max(self.peak, len(self._states))

    def remove(self, coord: Coord) -> list[Coord]:
        """Eq. 4 after rendering `coord`: drop every state no later patch can select."""
        n = self.direction.order(*coord, self.grid)
        gone = []
        while self._expiry and self._expiry[0][0] <= n:
            _, c = heapq.heappop(self._expiry)
            self._states.pop(c, None)
            gone.append(c)
        return gone

    def clear(self) -> None:
        self._states.clear()
        self._expiry.clear()

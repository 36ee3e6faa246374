"""Generation directions: orders over the patch grid, `T(i, j, k, r) -> n` and its inverse.

A patch grid has H rows (axis 0, index i, "down" is +), W columns (axis 1, index j, "right" is
+) and F frames (axis 2, index k, "forward" is +). A direction names the axes from the fastest
to the slowest, each with a sign (DESIGN.md): "right-down-forward" is the usual raster (left to
right inside a row, rows top to bottom, frames last); "down-right-forward" walks each column top
to bottom, columns left to right. A two-word name means frames forward.

T is a mixed-radix number: the slowest axis is the most significant digit, and an axis walked
in the minus direction contributes `size - 1 - index`. So T is monotone in every coordinate
separately, which the pool uses: the last patch (in T) of any box is one of its corners.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

AXIS_WORDS = {"down": (0, 1), "up": (0, -1), "right": (1, 1), "left": (1, -1), "forward": (2, 1), "backward": (2, -1)}
WORD_OF = {v: k for k, v in AXIS_WORDS.items()}

# The four directions of the paper (section 3.1.1): what extension right, left, up, down needs.
PAPER_DIRECTIONS = ("down-right-forward", "down-left-forward", "right-up-forward", "right-down-forward")


@dataclass(frozen=True)
class Grid:
    """A patch grid: H rows, W columns, F frames."""

    H: int
    W: int
    F: int = 1

    def __post_init__(self):
        if min(self.H, self.W, self.F) < 1:
            raise ValueError(f"patch grid must be at least 1x1x1, got {self.H}x{self.W}x{self.F}")

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.H, self.W, self.F)

    def __len__(self) -> int:
        return self.H * self.W * self.F


@dataclass(frozen=True)
class Direction:
    """An order over patch grids: `axes` lists (axis, sign) from the fastest axis to the slowest."""

    axes: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    def __post_init__(self):
        if sorted(a for a, _ in self.axes) != [0, 1, 2] or any(s not in (1, -1) for _, s in self.axes):
            raise ValueError(f"a direction needs each of the axes 0, 1, 2 once with sign +-1, got {self.axes}")

    @classmethod
    def parse(cls, name: str | Direction) -> Direction:
        if isinstance(name, Direction):
            return name
        words = name.lower().replace("_", "-").split("-")
        if len(words) == 2:
            words.append("forward")
        try:
            axes = tuple(AXIS_WORDS[w] for w in words)
        except KeyError:
            raise ValueError(f"unknown direction {name!r}: use words from {sorted(AXIS_WORDS)}, fastest axis "
                             f"first, e.g. 'down-right-forward'") from None
        if len(axes) != 3 or len({a for a, _ in axes}) != 3:
            raise ValueError(f"direction {name!r} must name each axis (height, width, frames) once")
        return cls(axes)  # type: ignore[arg-type]

    @property
    def index(self) -> int:
        """A stable id in [0, NUM_DIRECTIONS): the position in all_directions(spatial_only=False)."""
        return _INDEX[self.axes]

    @property
    def name(self) -> str:
        return "-".join(WORD_OF[a] for a in self.axes)

    def __str__(self) -> str:
        return self.name

    def _digits(self, grid: Grid) -> list[tuple[int, int, int]]:
        """(axis, sign, stride) per axis, fastest first."""
        out, stride = [], 1
        for axis, sign in self.axes:
            out.append((axis, sign, stride))
            stride *= grid.size[axis]
        return out

    def order(self, i: int, j: int, k: int, grid: Grid) -> int:
        """T(i, j, k, r) -> n, 0-based."""
        coord = (i, j, k)
        n = 0
        for axis, sign, stride in self._digits(grid):
            c = coord[axis]
            if not 0 <= c < grid.size[axis]:
                raise IndexError(f"patch {(i, j, k)} outside grid {grid.size}")
            n += (c if sign > 0 else grid.size[axis] - 1 - c) * stride
        return n

    def coords(self, n: int, grid: Grid) -> tuple[int, int, int]:
        """T^-1(n, r) -> (i, j, k)."""
        if not 0 <= n < len(grid):
            raise IndexError(f"order {n} outside grid of {len(grid)} patches")
        coord = [0, 0, 0]
        for axis, sign, _ in self._digits(grid):
            size = grid.size[axis]
            c, n = n % size, n // size
            coord[axis] = c if sign > 0 else size - 1 - c
        return coord[0], coord[1], coord[2]

    def schedule(self, grid: Grid) -> list[tuple[int, int, int]]:
        """Every patch in generation order."""
        return [self.coords(n, grid) for n in range(len(grid))]

    def last_corner(self, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> tuple[int, int, int]:
        """The patch of the box [lo, hi] (inclusive) that comes last in this order."""
        c = [0, 0, 0]
        for axis, sign in self.axes:
            c[axis] = hi[axis] if sign > 0 else lo[axis]
        return c[0], c[1], c[2]


def all_directions(spatial_only: bool = True) -> list[Direction]:
    """Every axis order with every sign; with spatial_only, frames are slowest and forward (8)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = Direction(tuple(zip(perm, signs)))  # type: ignore[arg-type]
            if spatial_only and d.axes[2] != (2, 1):
                continue
            out.append(d)
    return out


def direction_for_extension(side: str) -> Direction:
    """The order that grows an image towards `side` (right, left, down, up).

    Extending right needs the columns walked left to right with each column finished before the
    next (down-right); extending down needs rows top to bottom (right-down); and so on.
    """
    table = {"right": "down-right-forward", "left": "down-left-forward",
             "down": "right-down-forward", "up": "right-up-forward"}
    if side not in table:
        raise ValueError(f"extension side must be one of {sorted(table)}, got {side!r}")
    return Direction.parse(table[side])


_INDEX = {d.axes: n for n, d in enumerate(all_directions(spatial_only=False))}
NUM_DIRECTIONS = len(_INDEX)  # 3! axis orders x 2^3 signs = 48
DEFAULT_DIRECTION = "down-right-forward"  # text-to-image's default order (memory flat in the width)

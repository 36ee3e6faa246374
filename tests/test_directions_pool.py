"""Directions (T and its inverse) and the nearby context pool, against brute force."""

import itertools
import random

import pytest

from model.directions import (
    NUM_DIRECTIONS,
    PAPER_DIRECTIONS,
    Direction,
    Grid,
    all_directions,
    direction_for_extension,
)
from model.pool import ContextPool, num_offsets, offset_index

GRIDS = [Grid(h, w, f) for h in range(1, 8) for w in range(1, 8) for f in range(1, 5)]
ALL = all_directions(spatial_only=False)


def test_every_direction_is_a_bijection_on_every_grid_up_to_7x7x4():
    assert len(ALL) == 48 and len(all_directions()) == 8
    for d in ALL:
        for g in GRIDS:
            orders = [d.order(i, j, k, g) for i in range(g.H) for j in range(g.W) for k in range(g.F)]
            assert sorted(orders) == list(range(len(g)))
            for n in range(len(g)):
                assert d.order(*d.coords(n, g), g) == n


def test_paper_directions_read_fastest_axis_first():
    g = Grid(2, 3, 2)
    # Right-Down-Forward: the raster, left to right inside a row, rows top to bottom, frames last.
    assert Direction.parse("right-down-forward").schedule(g)[:4] == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (1, 0, 0)]
    # Down-Right-Forward: each column top to bottom, columns left to right.
    assert Direction.parse("down-right-forward").schedule(g)[:3] == [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
    # Down-Left-Forward: columns right to left.
    assert Direction.parse("down-left-forward").schedule(g)[:3] == [(0, 2, 0), (1, 2, 0), (0, 1, 0)]
    # Right-Up-Forward: rows bottom to top, each left to right.
    assert Direction.parse("right-up-forward").schedule(g)[:4] == [(1, 0, 0), (1, 1, 0), (1, 2, 0), (0, 0, 0)]
    for name in PAPER_DIRECTIONS:  # frames always slowest and forward
        sched = Direction.parse(name).schedule(g)
        assert [c[2] for c in sched] == sorted(c[2] for c in sched)
    assert direction_for_extension("left").name == "down-left-forward"
    with pytest.raises(ValueError, match="unknown direction"):
        Direction.parse("sideways-down")


def brute_select(rendered, coord, expand):
    return {c for c in rendered if all(abs(a - b) <= e for a, b, e in zip(c, coord, expand))}


def brute_needed(rendered, future, expand):
    """States some future patch can still select."""
    return {c for c in rendered if any(all(abs(a - b) <= e for a, b, e in zip(c, q, expand)) for q in future)}


@pytest.mark.parametrize("seed", range(30))
def test_pool_select_and_remove_match_brute_force(seed):
    rng = random.Random(seed)
    grid = Grid(rng.randint(1, 6), rng.randint(1, 6), rng.randint(1, 3))
    expand = (rng.randint(0, 2), rng.randint(0, 2), rng.randint(0, 2))
    d = rng.choice(ALL)
    pool = ContextPool(grid, d, expand)
    sched = d.schedule(grid)
    for n, coord in enumerate(sched):
        chosen = pool.select(coord)
        assert set(chosen) == brute_select(sched[:n], coord, expand)
        assert [d.order(*c, grid) for c in chosen] == sorted(d.order(*c, grid) for c in chosen)
        pool.add(coord, [])
        pool.remove(coord)
        assert set(pool.held) == brute_needed(sched[: n + 1], sched[n + 1:], expand)


def test_pool_peak_does_not_grow_along_the_slow_axis():
    def peak(grid, direction):
        pool = ContextPool(grid, direction, (2, 2, 0))
        for coord in Direction.parse(direction).schedule(grid):
            pool.add(coord, [])
            pool.remove(coord)
        return pool.peak

    # Column order extends along the width: 2 x 8 and 2 x 64 need the same pool.
    assert peak(Grid(2, 64), "down-right-forward") == peak(Grid(2, 8), "down-right-forward")
    # Row order extends along the height.
    assert peak(Grid(64, 2), "right-down-forward") == peak(Grid(8, 2), "right-down-forward")
    # ... and the wrong order for the long axis does grow (the test can fail).
    assert peak(Grid(64, 4), "down-right-forward") > peak(Grid(8, 4), "down-right-forward")


def test_offset_index_covers_the_window_once():
    expand = (2, 1, 3)
    seen = {offset_index(o, expand) for o in itertools.product(range(-2, 3), range(-1, 2), range(-3, 4))}
    assert seen == set(range(num_offsets(expand))) and num_offsets(expand) == 5 * 3 * 7


def test_direction_index_is_a_stable_bijection_over_all_orders():
    dirs = all_directions(spatial_only=False)
    assert NUM_DIRECTIONS == len(dirs) == 48
    assert sorted(d.index for d in dirs) == list(range(NUM_DIRECTIONS))
    for d in dirs:
        assert Direction.parse(d.name).index == d.index
    assert Direction.parse("down-right").index == Direction.parse("down-right-forward").index

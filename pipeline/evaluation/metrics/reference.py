"""Cached Gaussian statistics of a real reference set (Block-FID's blocks, FVD's clips).

A reference set is expensive to embed (LHQC's 5k test images are 245k blocks) and the same for
every evaluation of a run, so its statistics are computed once and kept as an `.npz` under
`run_dir/eval/cache/`: `mean`, `cov`, `count` and `key`, the JSON cache key. The key holds
everything the numbers depend on: the metric, the list of inputs (path, size, mtime and crop of
each), the sha256 of the weight file and the extraction parameters. The file is named by the
key's hash and reused only when the key stored inside equals the current one; anything else
(another reference set, changed files, other weights, a damaged cache file) recomputes. Writing
is atomic, so a killed run never leaves a cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic
from pipeline.evaluation.metrics.fid import RunningStats

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class GaussianStats:
    mean: np.ndarray
    cov: np.ndarray
    count: int


def make_key(kind: str, inputs: list, weights_sha256: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"version": CACHE_VERSION, "kind": kind, "weights_sha256": weights_sha256,
            "params": params, "inputs": inputs}


def _key_text(key: dict[str, Any]) -> str:
    return json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)


def cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(_key_text(key).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key['kind']}-{digest}.npz"


def load(path: Path, key: dict[str, Any]) -> GaussianStats | None:
    """The cached statistics at `path` if the file is intact and made for exactly `key`."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != _key_text(key):
                log.info("%s: made for another reference set or other weights; recomputing", path)
                return None
            return GaussianStats(mean=data["mean"].astype(np.float64), cov=data["cov"].astype(np.float64),
                                 count=int(data["count"]))
    except Exception as e:  # a damaged or foreign file is recomputed, never trusted
        log.warning("%s: unreadable reference cache (%s: %s); recomputing", path, type(e).__name__, e)
        return None


def save(path: Path, key: dict[str, Any], stats: GaussianStats) -> None:
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps np.savez from appending '.npz'
            np.savez(f, mean=stats.mean, cov=stats.cov, count=np.int64(stats.count),
                     key=np.array(_key_text(key)))


def cached_stats(cache_dir: Path, key: dict[str, Any],
                 compute: Callable[[], RunningStats]) -> tuple[GaussianStats, bool, Path]:
    """(statistics, whether they came from the cache, cache file) for `key`."""
    path = cache_file(cache_dir, key)
    found = load(path, key)
    if found is not None:
        log.info("reference statistics reused from %s (%d samples)", path, found.count)
        return found, True, path
    running = compute()
    stats = GaussianStats(mean=running.mean, cov=running.cov, count=running.count)
    save(path, key, stats)
    log.info("reference statistics of %d samples cached in %s", stats.count, path)
    return stats, False, path

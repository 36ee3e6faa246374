"""Deterministic train/test split of the image manifest (end of stage 30; also callable alone).

Every item is ranked by sha256(salt + ":" + id); the first `test` items of that ranking are
"test", the next `train` are "train", any left over are "unused" (only when both sizes are given
and add up to less than the set). The ranking depends on nothing but the ids, so the split is
the same on every machine, for any row order and any number of ranks, and an item's side does
not change when unrelated settings do.

Sizes come from counts or fractions (not both):
    caption:
      split:
        test_count: 5000     # the default; LHQC (paper 4.1): 90k images -> 85k train / 5k test
        train_count: null    # null: all the rest
        # or: test_fraction: 0.1, train_fraction: null
Fractions are rounded half up to whole items.

Videos (LHQ-V) are split the same way by *video*, at the end of stage 20 (`filter.split`): the
ranking is over the source videos' ids, sizes count videos, and every clip of a video is on its
video's side, so no test clip shares a video with a training clip (`assign_groups`).

Usage alone: python -m pipeline.curation.split --config run.yaml   (reads caption.split and caption.manifest)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, from_dict, load_config
from pipeline.errors import PipelineError, entry_point
from pipeline.formats.manifest import IMAGE_COLUMNS, IMAGE_MANIFEST, read_rows, write_rows

log = logging.getLogger("split")


DEFAULT_TEST_COUNT = 5000  # LHQC's test set; the rest is train


@dataclass
class SplitConfig:
    test_count: int | None = None  # all four unset: test_count = DEFAULT_TEST_COUNT
    train_count: int | None = None
    test_fraction: float | None = None
    train_fraction: float | None = None
    salt: str = "lhqc"

    def __post_init__(self):
        counts = self.test_count is not None or self.train_count is not None
        fractions = self.test_fraction is not None or self.train_fraction is not None
        if counts and fractions:
            raise ValueError("give split sizes as counts or as fractions, not both")
        for name in ("test_count", "train_count"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
        for name in ("test_fraction", "train_fraction"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


class SplitError(PipelineError, ValueError):
    pass


def split_sizes(n: int, cfg: SplitConfig) -> tuple[int, int]:
    """(n_train, n_test) for a set of n items."""
    def frac(f: float) -> int:
        return int(math.floor(f * n + 0.5))

    if cfg.test_fraction is not None or cfg.train_fraction is not None:
        n_test = frac(cfg.test_fraction) if cfg.test_fraction is not None else None
        n_train = frac(cfg.train_fraction) if cfg.train_fraction is not None else None
    elif cfg.test_count is None and cfg.train_count is None:
        n_test, n_train = DEFAULT_TEST_COUNT, None
    else:
        n_test, n_train = cfg.test_count, cfg.train_count
    if n_test is None:
        n_test = n - (n_train or 0)
    if n_train is None:
        n_train = n - n_test
        if n_train <= 0 and n:
            raise SplitError(f"a test set of {n_test} leaves no training images out of {n}; set "
                             "caption.split.test_count lower or use caption.split.test_fraction")
    if n_test < 0 or n_train < 0 or n_train + n_test > n:
        raise SplitError(f"split sizes train {n_train} + test {n_test} do not fit in {n} items")
    return n_train, n_test


def assign(ids: Sequence[str], cfg: SplitConfig) -> list[str]:
    """The split of each id ("train", "test" or "unused"), in the order given."""
    if len(set(ids)) != len(ids):
        raise SplitError("ids are not unique; the split needs one row per id")
    n_train, n_test = split_sizes(len(ids), cfg)
    order = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{cfg.salt}:{ids[i]}".encode()).digest())
    labels = ["unused"] * len(ids)
    for rank, i in enumerate(order):
        if rank < n_test:
            labels[i] = "test"
        elif rank < n_test + n_train:
            labels[i] = "train"
    return labels


def assign_groups(groups: Sequence[str], cfg: SplitConfig) -> list[str]:
    """The split of each item given its group (a clip's video): sizes count groups, and every item
    of a group is on its group's side. Deterministic and order-free like `assign`."""
    unique = sorted(set(groups))
    side = dict(zip(unique, assign(unique, cfg)))
    return [side[g] for g in groups]


def apply_by_video(clips: list[dict], cfg: SplitConfig) -> list[dict]:
    """Clip rows with their `split` set by video (`video_id`, or the source for older manifests)."""
    labels = assign_groups([str(c.get("video_id") or c["source"]) for c in clips], cfg)
    return [{**c, "split": s} for c, s in zip(clips, labels)]


def apply(rows: list[dict], cfg: SplitConfig) -> list[dict]:
    """Rows with their `split` column set (new dicts; order kept)."""
    labels = assign([r["id"] for r in rows], cfg)
    return [{**r, "split": s} for r, s in zip(rows, labels)]


def split_manifest(path: Path, cfg: SplitConfig) -> dict[str, int]:
    """Write the split into the manifest at `path` (atomically); returns the counts."""
    rows = apply(read_rows(path, IMAGE_COLUMNS), cfg)
    write_rows(path, rows, IMAGE_COLUMNS)
    counts = Counter(r["split"] for r in rows)
    log.info("split %s: train %d, test %d, unused %d", path, counts["train"], counts["test"], counts["unused"])
    return {k: counts[k] for k in ("train", "test", "unused")}


@entry_point
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.curation.split", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="run YAML (section caption, keys split and manifest)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_cfg = load_config(args.config)
    # The split's settings live in the caption section; stage 30 validates the rest of it.
    section = run_cfg.raw.get("caption") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{run_cfg.path}: section 'caption' must be a mapping")
    cfg = from_dict(SplitConfig, section.get("split") or {}, where=f"{run_cfg.path}: caption.split")
    split_manifest(run_cfg.run_dir / section.get("manifest", IMAGE_MANIFEST), cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

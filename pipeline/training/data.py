"""Training data for render-and-optimize: token set checks, a deterministic distributed sampler, batches.

Choices the paper leaves open:
- Order: every epoch is a fresh permutation of the token set drawn from (seed, epoch) alone, so the
  order needs no saved state and is the same whatever the number of ranks. The epoch is cut into
  global batches of `global_batch` items (the incomplete tail is dropped: every rank must run the
  same number of patch steps in lock-step). Inside global batch b, rank r takes the items at
  positions [r * M * A, (r + 1) * M * A) and splits them into A micro-batches of M (micro batch,
  accumulation). One rank with M * A = G sees the same items as G / M ranks would together, which
  is what makes one rank and many ranks give the same gradient.
- Caption drop for classifier-free guidance: decided per item from (seed, epoch, batch, position
  in the global batch), again independent of the rank count.
- Position: (epoch, next batch); checkpoints store it, so a resumed run continues mid-epoch with
  exactly the batches an uninterrupted run would have seen.
- Grid: a token set has one grid (pipeline.formats.shards), so every batch on every rank has the same
  patch grid; `check_token_set` verifies, before training, everything that would otherwise fail
  deep inside a step: missing or truncated shards, index rows beyond a shard's end, a codebook
  larger than the model's vocabulary, a grid that does not divide into patches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.config import RenderConfig
from model.directions import Grid
from model.patches import patch_grid
from pipeline.errors import PipelineError
from pipeline.formats.shards import ShardError, TokenSet
from pipeline.formats.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)


class DataError(PipelineError, RuntimeError):
    """Training data that cannot be used; the message names the file and the problem."""


def check_token_set(folder: str | Path, cfg: RenderConfig, global_batch: int) -> tuple[TokenSet, Grid]:
    """Open the token set and verify every shard up front; returns it and its patch grid."""
    folder = Path(folder)
    try:
        ts = TokenSet(folder)
    except ShardError as e:
        raise DataError(f"training token set unusable: {e}") from e
    meta = ts.meta
    if meta.vocab_size > cfg.vocab_size:
        raise DataError(f"{folder / 'meta.json'}: token ids outside the codebook: the token set was made with "
                        f"{meta.vocab_size} codes but the model's vocab_size is {cfg.vocab_size}")
    if meta.vocab_size < cfg.vocab_size:
        # It would train, but the sampler decodes with this VQGAN and needs vocab_size == its codes:
        # say so now rather than after the run.
        raise DataError(f"{folder / 'meta.json'}: the token set was made by a VQGAN with {meta.vocab_size} codes "
                        f"but the model's vocab_size is {cfg.vocab_size}; set model.vocab_size: {meta.vocab_size}")
    try:
        grid = patch_grid(tuple(meta.grid), cfg.patch)
    except ValueError as e:
        raise DataError(f"{folder / 'meta.json'}: {e}") from e
    if len(ts) < global_batch:
        raise DataError(f"{folder}: {len(ts)} items, fewer than one global batch of {global_batch}")
    # Touch the last listed row of every shard: opens (memory-maps) each file, which finds missing and
    # truncated shards and index rows past a shard's end before any rank starts stepping.
    last: dict[str, tuple[int, int]] = {}
    for i, (name, row) in enumerate(zip(ts.shards, ts.rows)):
        if row >= last.get(name, (-1, -1))[0]:
            last[name] = (row, i)
    for name in sorted(last):
        try:
            ts.codes(last[name][1])
        except ShardError as e:
            raise DataError(f"training token set unusable: {e}") from e
    return ts, grid


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next batch to train is `batch` of `epoch`."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_dict(cls, d: dict) -> DataPosition:
        return cls(int(d["epoch"]), int(d["batch"]))

    def advanced(self, batches_per_epoch: int) -> DataPosition:
        if self.batch + 1 >= batches_per_epoch:
            return DataPosition(self.epoch + 1, 0)
        return DataPosition(self.epoch, self.batch + 1)


class GlobalBatchSampler:
    """Which items each rank trains on in each global batch (see the module docstring)."""

    def __init__(self, n_items: int, global_batch: int, micro_batch: int, accumulation: int, rank: int,
                 world: int, seed: int):
        if micro_batch * accumulation * world != global_batch:
            raise ValueError(f"global batch {global_batch} != micro batch {micro_batch} x accumulation "
                             f"{accumulation} x ranks {world}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        self.n_items, self.global_batch = n_items, global_batch
        self.micro_batch, self.accumulation = micro_batch, accumulation
        self.rank, self.world, self.seed = rank, world, seed
        self.batches_per_epoch = n_items // global_batch
        if self.batches_per_epoch < 1:
            raise ValueError(f"{n_items} items are fewer than one global batch of {global_batch}")
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)

    def order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, 0x5A3D, epoch]).permutation(self.n_items)
            self._order_epoch = epoch
        return self._order

    def global_items(self, pos: DataPosition) -> np.ndarray:
        if not 0 <= pos.batch < self.batches_per_epoch:
            raise IndexError(f"batch {pos.batch} outside the epoch's {self.batches_per_epoch} batches")
        start = pos.batch * self.global_batch
        return self.order(pos.epoch)[start: start + self.global_batch]

    def rank_slice(self) -> slice:
        per_rank = self.micro_batch * self.accumulation
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def micro_batches(self, pos: DataPosition) -> list[np.ndarray]:
        """This rank's items of the batch at `pos`, as `accumulation` arrays of `micro_batch` indices."""
        mine = self.global_items(pos)[self.rank_slice()]
        return [mine[a * self.micro_batch: (a + 1) * self.micro_batch] for a in range(self.accumulation)]


def text_drop_decisions(seed: int, pos: DataPosition, global_batch: int, p: float) -> np.ndarray:
    """True where the caption of the item at each global-batch position is dropped (CFG training)."""
    if p <= 0:
        return np.zeros(global_batch, dtype=bool)
    rng = np.random.default_rng([seed, 0x7E47, pos.epoch, pos.batch])
    return rng.random(global_batch) < p


@dataclass
class MicroBatch:
    codes: torch.Tensor  # [M, f, h, w] int64
    text_ids: torch.Tensor | None  # [M, Lt]
    text_mask: torch.Tensor | None  # [M, Lt] bool
    ids: list[str]


class TrainData:
    """Loads this rank's micro-batches for a data position, on the training device."""

    def __init__(self, tokenset: TokenSet, sampler: GlobalBatchSampler, tokenizer: TextTokenizer | None,
                 text_len: int, text_drop: float, seed: int, device: torch.device):
        self.ts, self.sampler, self.tokenizer = tokenset, sampler, tokenizer
        self.text_len, self.text_drop, self.seed, self.device = text_len, text_drop, seed, device

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def load(self, pos: DataPosition) -> list[MicroBatch]:
        """Read and check this rank's items; a bad item raises DataError naming its file and row."""
        drops = text_drop_decisions(self.seed, pos, self.sampler.global_batch, self.text_drop)[
            self.sampler.rank_slice()]
        out = []
        for a, idx in enumerate(self.sampler.micro_batches(pos)):
            try:
                codes = np.stack([self.ts.codes(int(i)) for i in idx])
            except ShardError as e:
                raise DataError(str(e)) from e
            text_ids = text_mask = None
            if self.tokenizer is not None:
                text_ids, text_mask = self.tokenizer.encode([self.ts.captions[int(i)] for i in idx], self.text_len)
                drop = torch.from_numpy(drops[a * len(idx): (a + 1) * len(idx)].copy())
                text_mask = text_mask & ~drop[:, None]
                text_ids = text_ids.masked_fill(~text_mask, 0)
                text_ids, text_mask = text_ids.to(self.device), text_mask.to(self.device)
            out.append(MicroBatch(torch.from_numpy(codes).to(self.device), text_ids, text_mask,
                                  [self.ts.ids[int(i)] for i in idx]))
        return out


def training_captions(ts: TokenSet) -> list[str]:
    """Every caption of the training set in index order (what the text tokenizer learns from)."""
    return [c or "" for c in ts.captions]

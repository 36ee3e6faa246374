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
- Windows (single-image runs, `train.windows`): the data is one code canvas or a few
  (pipeline.formats.canvas), and an epoch is `per_epoch` windows of one size drawn inside their
  training boxes (`TrainWindows`). A window's canvas and corner are functions of (seed, epoch,
  index), like the order, so they need no saved state and do not depend on the rank count. A
  canvas is drawn with a weight equal to its number of possible corners (uniform over the
  positions of all canvases). `WindowSet` gives one epoch's windows the interface of a token set
  (meta, ids, captions, codes), so the sampler, the batches and validation use them unchanged.
  Memory does not depend on the image: a window of any image is the same grid. With `size: null`
  the window is the whole training box cut to whole patches (the patch chain as one instance,
  shifted by up to a patch when `align: code`); its pool stays flat along the long axis in the
  orders whose slowest axis is that axis (a column order for a wide image).
- Held-out windows (`holdout_windows`) tile a canvas's held-out box completely: corners every
  window along each axis, the last one flush with the box's end (overlapping its neighbour when
  the box is not a whole number of windows).
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
from pipeline.formats.canvas import Canvas, CanvasSet
from pipeline.formats.shards import ShardError, TokenSet, TokenSetMeta
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


# ----------------------------------------------------------------------------- windows of code canvases

Corner = tuple[int, int, int]  # (canvas index, top row, left column) in codes


class WindowSet:
    """Windows of one size (codes) over code canvases, with the interface of a TokenSet."""

    def __init__(self, cset: CanvasSet, size: tuple[int, int], corners: list[Corner], tag: str):
        self.cset, self.size, self.corners = cset, size, corners
        self.folder = cset.folder
        m = cset.meta
        self.meta = TokenSetMeta(grid=(1, size[0], size[1]), vocab_size=m.vocab_size, downsample=m.downsample,
                                 vqgan_sha256=m.vqgan_sha256)
        self.ids = [f"{cset.canvases[c].id}@{tag}:{y},{x}" for c, y, x in corners]
        self.captions = [cset.canvases[c].caption for c, _, _ in corners]
        self._codes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.corners)

    def codes(self, i: int) -> np.ndarray:
        c, y, x = self.corners[i]
        if c not in self._codes:
            self._codes[c] = self.cset.canvases[c].codes()
        out = np.asarray(self._codes[c][:, y:y + self.size[0], x:x + self.size[1]], dtype=np.int64)
        if out.shape[1:] != self.size:
            raise ShardError(f"{self.cset.canvases[c].path}: window {self.ids[i]} runs past the canvas")
        if out.min() < 0 or out.max() >= self.meta.vocab_size:
            raise ShardError(f"{self.cset.canvases[c].path}: window {self.ids[i]} holds token ids outside the "
                             f"codebook [0, {self.meta.vocab_size})")
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, str, str]:
        return self.codes(i), self.captions[i], self.ids[i]


def _whole_boxes(canvases: list[Canvas], region: str, patch: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Each canvas's `region` box cut to whole patches, (rows, columns) in codes."""
    hp, wp, _ = patch
    out = []
    for c in canvases:
        x0, y0, x1, y1 = c.box(region)
        out.append(((y1 - y0) // hp * hp, (x1 - x0) // wp * wp))
        if min(out[-1]) < 1:
            raise DataError(f"{c.path}: the {region} box {list(c.box(region))} is smaller than one patch of "
                            f"{hp} x {wp} codes")
    return out


def whole_box_size(canvases: list[Canvas], region: str, patch: tuple[int, int, int]) -> tuple[int, int]:
    """The window (codes) that is a box of `region` cut to whole patches; one size for every canvas."""
    sizes = set(_whole_boxes(canvases, region, patch))
    if len(sizes) != 1:
        raise DataError(f"the canvases' {region} boxes give several whole-box windows {sorted(sizes)}; one batch "
                        "needs one grid: set train.windows.size")
    return sizes.pop()


class TrainWindows:
    """The random training windows of every epoch (see the module docstring)."""

    def __init__(self, cset: CanvasSet, size: tuple[int, int], per_epoch: int, seed: int, step: tuple[int, int]):
        self.cset, self.size, self.per_epoch, self.seed, self.step = cset, size, per_epoch, seed, step
        # Possible corners per canvas along each axis, on the `step` grid inside the training box.
        self.ranges = []
        for c in cset.canvases:
            x0, y0, x1, y1 = c.train_box
            ny, nx = (y1 - y0 - size[0]) // step[0] + 1, (x1 - x0 - size[1]) // step[1] + 1
            if ny < 1 or nx < 1:
                raise DataError(f"{c.path}: training box {list(c.train_box)} (codes) is smaller than a window of "
                                f"{size[0]} x {size[1]} codes; lower train.windows.size")
            self.ranges.append((y0, x0, ny, nx))
        counts = np.array([ny * nx for _, _, ny, nx in self.ranges], dtype=np.float64)
        self.weights = counts / counts.sum()
        self._epoch, self._set = -1, None

    def corners(self, epoch: int) -> list[Corner]:
        rng = np.random.default_rng([self.seed, 0x3D1F, epoch])
        which = rng.choice(len(self.ranges), size=self.per_epoch, p=self.weights)
        out = []
        for c in which.tolist():
            y0, x0, ny, nx = self.ranges[c]
            out.append((c, y0 + int(rng.integers(ny)) * self.step[0], x0 + int(rng.integers(nx)) * self.step[1]))
        return out

    def for_epoch(self, epoch: int) -> WindowSet:
        if epoch != self._epoch:
            self._set, self._epoch = WindowSet(self.cset, self.size, self.corners(epoch), f"e{epoch}"), epoch
        return self._set


def holdout_windows(cset: CanvasSet, size: tuple[int, int] | None, patch: tuple[int, int, int]) -> WindowSet:
    """Windows (codes) that tile every canvas's held-out box: of `size` (e.g. the training windows') where the
    boxes allow, else as large as they allow in whole patches (`size=None`: the boxes cut to whole patches)."""
    boxes = _whole_boxes(cset.canvases, "holdout", patch)
    whole = (min(b[0] for b in boxes), min(b[1] for b in boxes))
    size = whole if size is None else (min(size[0], whole[0]), min(size[1], whole[1]))
    corners = []
    for n, c in enumerate(cset.canvases):
        x0, y0, x1, y1 = c.box("holdout")
        ys = _tiling(y0, y1, size[0])
        xs = _tiling(x0, x1, size[1])
        corners += [(n, y, x) for y in ys for x in xs]
    return WindowSet(cset, size, corners, "holdout")


def _tiling(lo: int, hi: int, n: int) -> list[int]:
    """Starts of windows of n that cover [lo, hi): every n, the last flush with hi."""
    starts = list(range(lo, hi - n + 1, n))
    if starts[-1] + n < hi:
        starts.append(hi - n)
    return starts


def window_codes(windows, cfg: RenderConfig) -> tuple[int, int]:
    """`train.windows.size` (patches) in codes."""
    return windows.size[0] * cfg.patch[0], windows.size[1] * cfg.patch[1]


def check_windows(folder: str | Path, cfg: RenderConfig, windows, global_batch: int,
                  seed: int) -> tuple[TrainWindows, Grid]:
    """Open the canvas set, check it against the model, plan the windows; returns them and their patch grid."""
    folder = Path(folder)
    try:
        cset = CanvasSet(folder)
    except ShardError as e:
        raise DataError(f"training canvases unusable: {e}") from e
    if cset.meta.vocab_size != cfg.vocab_size:
        raise DataError(f"{folder / 'meta.json'}: the canvases were made by a VQGAN with {cset.meta.vocab_size} "
                        f"codes but the model's vocab_size is {cfg.vocab_size}; set model.vocab_size: "
                        f"{cset.meta.vocab_size}")
    if cfg.patch[2] != 1:
        raise DataError(f"canvases are images: the model's patch must span one frame, got {list(cfg.patch)}")
    size = whole_box_size(cset.canvases, "train", cfg.patch) if windows.size is None else window_codes(windows, cfg)
    step = (1, 1) if windows.align == "code" else tuple(cfg.patch[:2])
    if windows.per_epoch < global_batch:
        raise DataError(f"train.windows.per_epoch {windows.per_epoch} is fewer than one global batch of "
                        f"{global_batch}")
    for c in cset.canvases:  # opens (memory-maps) each file: missing and truncated canvases fail here
        try:
            c.codes()
        except ShardError as e:
            raise DataError(f"training canvases unusable: {e}") from e
    train = TrainWindows(cset, size, windows.per_epoch, seed, step)
    return train, patch_grid((1, *size), cfg.patch)


class WindowTrainData(TrainData):
    """TrainData over the windows of each epoch (the token set changes with the epoch)."""

    def __init__(self, windows: TrainWindows, sampler: GlobalBatchSampler, tokenizer: TextTokenizer | None,
                 text_len: int, text_drop: float, seed: int, device: torch.device):
        super().__init__(windows.for_epoch(0), sampler, tokenizer, text_len, text_drop, seed, device)
        self.windows = windows

    def load(self, pos: DataPosition) -> list[MicroBatch]:
        self.ts = self.windows.for_epoch(pos.epoch)
        return super().load(pos)


def open_training_set(folder: str | Path, cfg: RenderConfig, global_batch: int, windows,
                      seed: int) -> tuple[TokenSet | WindowSet, Grid, TrainWindows | None]:
    """The training data of `folder`: a token set, or with `windows` (train.windows) the first epoch's
    windows of a canvas set and the window plan."""
    if windows is None:
        ts, grid = check_token_set(folder, cfg, global_batch)
        return ts, grid, None
    plan, grid = check_windows(folder, cfg, windows, global_batch, seed)
    return plan.for_epoch(0), grid, plan


def make_train_data(ts, plan: TrainWindows | None, sampler: GlobalBatchSampler, tokenizer: TextTokenizer | None,
                    text_len: int, text_drop: float, seed: int, device: torch.device) -> TrainData:
    if plan is None:
        return TrainData(ts, sampler, tokenizer, text_len, text_drop, seed, device)
    return WindowTrainData(plan, sampler, tokenizer, text_len, text_drop, seed, device)

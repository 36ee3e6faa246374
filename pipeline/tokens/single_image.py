"""The single-image source in the token stages: random crops for the VQGAN, whole-image code canvases.

Reads the single-image manifest of stage 12 (pipeline.curation.single_image; rows of
pipeline.formats.manifest.SINGLE_IMAGE_COLUMNS) and the pixels it stored.

- `SingleImageCrops` (stage 40, `train_vqgan.single_image: true`): square crops of `random_crop`
  pixels at random positions inside each image's training box (never the held-out strip), with
  random horizontal flips. The crop of draw d is a function of (seed, d) alone, as for the image
  manifest's crops, so a resumed run sees the same crops.
- `tokenize_canvases` (stage 50): each image's usable box encoded whole, tile by tile
  (model.tiles.encode_tiled), into one code canvas (pipeline.formats.canvas) with its training and
  held-out boxes in codes. Images go round-robin to the ranks; a canvas whose record exists is kept.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch

from model.tiles import encode_tiled
from pipeline.config import ConfigError
from pipeline.formats import canvas, manifest
from pipeline.formats.manifest import SINGLE_IMAGE_COLUMNS
from pipeline.ranks import RankInfo

log = logging.getLogger("tokenize")


def read_rows(path: Path) -> list[dict]:
    rows = manifest.read_rows(path, SINGLE_IMAGE_COLUMNS)
    if not rows:
        raise ConfigError(f"{path}: the single-image manifest lists no image")
    return rows


class SingleImageCrops(torch.utils.data.Dataset):
    """(image index, draw) -> a crop [3, window, window] in [-1, 1] from that image's training box."""

    def __init__(self, rows: list[dict], window: int, flip: bool, seed: int):
        for r in rows:
            x0, y0, x1, y1 = r["train_box"]
            if x1 - x0 < window or y1 - y0 < window:
                raise ConfigError(f"{r['path']}: training box {list(r['train_box'])} is smaller than "
                                  f"train_vqgan.random_crop {window}")
        self.rows, self.window, self.flip, self.seed = rows, window, flip, seed
        self._pixels: dict[int, np.ndarray] = {}  # memory maps, opened once per worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        index, draw = key
        row = self.rows[index]
        if index not in self._pixels:
            self._pixels[index] = manifest.open_pixels(row)
        rng = random.Random(self.seed * 1_000_003 + draw)
        x0, y0, x1, y1 = row["train_box"]
        top = y0 + rng.randrange(y1 - y0 - self.window + 1)
        left = x0 + rng.randrange(x1 - x0 - self.window + 1)
        crop = np.array(self._pixels[index][top:top + self.window, left:left + self.window])
        x = torch.from_numpy(crop).permute(2, 0, 1).float().div(127.5).sub(1.0)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x


def code_box(box: list[int] | None, factor: int) -> tuple[int, int, int, int] | None:
    """A pixel box [x0, y0, x1, y1] relative to the usable box (which starts at 0, 0) in codes."""
    if not box:
        return None
    if any(v % factor for v in box):
        raise ConfigError(f"box {list(box)} is not on the VQGAN's {factor}-pixel grid; run stage 12 again")
    return tuple(v // factor for v in box)  # type: ignore[return-value]


def tokenize_canvases(rows: list[dict], folder: Path, model, device: torch.device, sha: str, tile: int, margin: int,
                      ranks: RankInfo, batch_size: int = 8) -> dict:
    """Encode this rank's images into canvases under `folder`; returns counts."""
    f = model.downsample
    meta = canvas.CanvasMeta(vocab_size=model.config.n_embed, downsample=f, vqgan_sha256=sha, tile=tile,
                             margin=margin)
    folder.mkdir(parents=True, exist_ok=True)
    canvas.write_meta(folder, meta)
    stats = {"canvases": 0, "skipped": 0, "codes": 0}
    for n, row in enumerate(rows):
        if n % ranks.world_size != ranks.rank:
            continue
        if canvas.canvas_done(folder, row["id"]):
            stats["skipped"] += 1
            continue
        t0 = time.monotonic()
        x0, y0, x1, y1 = row["box"]
        pixels = manifest.open_pixels(row)[y0:y1, x0:x1]
        model.eval()
        codes = encode_tiled(model.to(device), pixels, tile, margin, batch_size)
        canvas.write_canvas(folder, row["id"], codes[None].numpy(), code_box(row["train_box"], f),
                            code_box(row["holdout_box"], f), row.get("caption") or "", row["path"], meta)
        stats["canvases"] += 1
        stats["codes"] += codes.numel()
        log.info("canvas %s: %d x %d px -> %d x %d codes in %.1f s (tiles of %d px, margin %d px)", row["id"],
                 x1 - x0, y1 - y0, *codes.shape, time.monotonic() - t0, tile, margin)
    return stats

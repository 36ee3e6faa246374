"""Code canvases: each large image of a single-image run as one whole code grid (tokens -> training, sampling).

Token shards (pipeline.formats.shards) hold many items of one grid; a single-image run has one item (or
a few) of any size, which the trainer cuts into windows and the sampler continues. A canvas set is a folder:

    meta.json     vocab_size, downsample, vqgan_sha256, and how the codes were made (tile, margin in pixels)
    <id>.npy      int16 codes [1, h, w] of one image's usable box (the sampler's `.codes.npy` layout)
    <id>.json     the canvas record, written last (its done-marker): id, source, caption, shape
                  [1, h, w], and the training and held-out boxes in codes, [x0, y0, x1, y1]
                  (x along the width, as the pixel boxes of pipeline.formats.manifest)

Every file is written under a temporary name and renamed; a canvas counts only when its record exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.formats.shards import ShardError, read_meta_file, write_meta_once


@dataclass(frozen=True)
class CanvasMeta:
    vocab_size: int
    downsample: int
    vqgan_sha256: str
    tile: int  # pixels per encoder tile side
    margin: int  # pixels of context around each tile

    @classmethod
    def from_json(cls, d: dict) -> CanvasMeta:
        return cls(int(d["vocab_size"]), int(d["downsample"]), str(d["vqgan_sha256"]), int(d["tile"]),
                   int(d["margin"]))


@dataclass(frozen=True)
class Canvas:
    id: str
    path: Path  # the .npy
    shape: tuple[int, int, int]  # (f, h, w) codes
    train_box: tuple[int, int, int, int]  # codes, [x0, y0, x1, y1]
    holdout_box: tuple[int, int, int, int] | None
    caption: str = ""
    source: str = ""

    def codes(self) -> np.ndarray:
        """int16 [f, h, w], memory-mapped read-only; a missing or truncated file is a ShardError naming it."""
        try:
            arr = np.load(self.path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise ShardError(f"{self.path}: canvas {self.id} missing or truncated ({e})") from e
        if tuple(arr.shape) != self.shape:
            raise ShardError(f"{self.path}: codes of shape {arr.shape}, its record says {self.shape}")
        return arr

    def box(self, region: str) -> tuple[int, int, int, int]:
        """The training ("train") or held-out ("holdout") box in codes."""
        if region == "train":
            return self.train_box
        if region == "holdout":
            if self.holdout_box is None:
                raise ShardError(f"{self.path}: canvas {self.id} has no held-out box (single_image.holdout_* is 0)")
            return self.holdout_box
        raise ValueError(f"region must be 'train' or 'holdout', got {region!r}")


def is_canvas_set(folder: str | Path) -> bool:
    meta = Path(folder) / "meta.json"
    return meta.is_file() and "tile" in atomic.read_json(meta)


def write_meta(folder: Path, meta: CanvasMeta) -> None:
    write_meta_once(folder, meta, asdict(meta), read_meta, "canvas set")


def read_meta(folder: Path) -> CanvasMeta:
    return read_meta_file(folder, CanvasMeta.from_json, "canvas set", "the single image has not been tokenised")


def write_canvas(folder: Path, canvas_id: str, codes: np.ndarray, train_box, holdout_box, caption: str, source: str,
                 meta: CanvasMeta) -> Canvas:
    """Write one canvas: codes [f, h, w], then its record (the done-marker)."""
    folder = Path(folder)
    codes = np.asarray(codes)
    if codes.ndim != 3:
        raise ShardError(f"{folder / canvas_id}: codes must be [f, h, w], got {codes.shape}")
    if codes.size and (codes.min() < 0 or codes.max() >= meta.vocab_size):
        raise ShardError(f"{folder / canvas_id}: codes outside [0, {meta.vocab_size})")
    npy = folder / f"{canvas_id}.npy"
    with atomic.atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(codes, dtype=np.int16))
    record = {"id": canvas_id, "file": npy.name, "shape": list(codes.shape), "train_box": list(train_box),
              "holdout_box": list(holdout_box) if holdout_box else None, "caption": caption, "source": source}
    atomic.write_json(folder / f"{canvas_id}.json", record)
    return _canvas(folder, record)


def _canvas(folder: Path, r: dict) -> Canvas:
    return Canvas(id=str(r["id"]), path=folder / r["file"], shape=tuple(int(v) for v in r["shape"]),
                  train_box=tuple(int(v) for v in r["train_box"]),
                  holdout_box=tuple(int(v) for v in r["holdout_box"]) if r.get("holdout_box") else None,
                  caption=str(r.get("caption") or ""), source=str(r.get("source") or ""))


def canvas_done(folder: Path, canvas_id: str) -> bool:
    return (Path(folder) / f"{canvas_id}.json").is_file()


class CanvasSet:
    """The finished canvases of a folder, in id order."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        self.canvases: list[Canvas] = []
        for p in sorted(self.folder.glob("*.json")):
            if p.name == "meta.json":
                continue
            try:
                self.canvases.append(_canvas(self.folder, atomic.read_json(p)))
            except (KeyError, ValueError, TypeError) as e:
                raise ShardError(f"{p}: malformed canvas record ({e})") from e
        if not self.canvases:
            raise ShardError(f"{self.folder}: no finished canvas (the tokenisation stage has not run)")
        self.canvases.sort(key=lambda c: c.id)  # by id, not file name: "x" before "x-mirror"

    def __len__(self) -> int:
        return len(self.canvases)

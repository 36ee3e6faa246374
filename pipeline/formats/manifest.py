"""Manifests: the Parquet tables that pass items between the curation stages.

Image manifest (ingest -> caption/split -> tokenize), one row per usable image:
    id       stable id ("img-" + 16 hex of sha1 of the source-relative name)
    path     file to read the pixels from (absolute)
    source   where it came from (folder / dataset / URL), for provenance
    width, height   size after EXIF orientation
    crop     [x0, y0, x1, y1] in oriented pixels (a square of side >= min_side)
    size     output side in pixels (the crop is resized to size x size when they differ)
    caption  "" until the caption stage (or the source's metadata) fills it
    split    "" until the split step: "train" or "test"

Clip manifest (video ingest -> object filter -> tokenize), one row per cut clip:
    id, path (the clip's MP4: exactly `frames` frames at `fps`, size x size), source (video),
    start (seconds), fps, frames, size, caption, split

Single-image manifest (single-image ingest -> VQGAN training, tokenize), one row per large image that
is a whole data set by itself (pipeline.curation.single_image):
    id, path (the source file), source, sha256 (of the source file), width, height (oriented)
    pixels       an uint8 RGB .npy [height, width, 3] of the oriented image (read memory-mapped: `open_pixels`)
    box          [x0, y0, x1, y1]: the usable part (sides cut to multiples of the VQGAN factor)
    train_box    the part to train on; holdout_box the held-out strip at one end ([] when none)
    caption

Writing is atomic (temporary name + rename); reading checks the columns and names the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic
from pipeline.errors import PipelineError

IMAGE_COLUMNS = ("id", "path", "source", "width", "height", "crop", "size", "caption", "split")
CLIP_COLUMNS = ("id", "path", "source", "start", "fps", "frames", "size", "caption", "split")
IMAGE_MANIFEST = "data/images/manifest.parquet"  # where stages 10-50 find it, relative to run_dir
SINGLE_IMAGE_COLUMNS = ("id", "path", "source", "sha256", "width", "height", "pixels", "box", "train_box",
                        "holdout_box", "caption")
SINGLE_IMAGE_MANIFEST = "data/single_image/manifest.parquet"  # relative to run_dir


class ManifestError(PipelineError, RuntimeError):
    pass


def stable_id(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def write_rows(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write rows (dicts with at least `columns`; extra keys kept) to Parquet, atomically."""
    path = Path(path)
    if rows:
        missing = [c for c in columns if c not in rows[0]]
        if missing:
            raise ManifestError(f"{path}: rows lack columns {missing}")
        keys = list(columns) + [k for k in rows[0] if k not in columns]
        table = pa.table({k: [r.get(k) for r in rows] for k in keys})
    else:
        table = pa.table({c: pa.array([], type=pa.string()) for c in columns})
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_rows(path: str | Path, columns: Sequence[str] = ()) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest missing (has the stage that writes it run?)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ManifestError(f"{path}: unreadable Parquet ({e})") from e
    missing = [c for c in columns if c not in table.column_names]
    if missing and table.num_rows:
        raise ManifestError(f"{path}: missing columns {missing}")
    return table.to_pylist()


def load_image_crop(path: str | Path, crop: Sequence[int], size: int) -> np.ndarray:
    """The manifest's crop of an image as uint8 RGB [size, size, 3].

    Orientation from EXIF is applied first (crops are in oriented pixels); any mode (CMYK,
    16-bit, palette, grayscale, alpha) becomes 8-bit RGB. Errors name the file.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im = to_rgb(im)
            x0, y0, x1, y1 = (int(v) for v in crop)
            if not (0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height):
                raise ManifestError(f"{path}: crop {list(crop)} outside the {im.width}x{im.height} image")
            im = im.crop((x0, y0, x1, y1))
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8).copy()
    except ManifestError:
        raise
    except Exception as e:
        raise ManifestError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def to_rgb(im):
    """8-bit RGB from any PIL mode; 16-bit and float modes are scaled, alpha is dropped on white."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo if hi > lo else 1.0)
        return Image.fromarray((arr * 255 + 0.5).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def open_pixels(row: dict) -> np.ndarray:
    """The pixels of a single-image manifest row: uint8 [height, width, 3], memory-mapped read-only."""
    path = Path(row["pixels"])
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise ManifestError(f"{path}: pixels of {row.get('id')} unreadable ({e}); run the single-image ingest "
                            "again") from e
    if arr.dtype != np.uint8 or arr.shape != (int(row["height"]), int(row["width"]), 3):
        raise ManifestError(f"{path}: pixels are {arr.dtype} {arr.shape}, the manifest says uint8 "
                            f"{(int(row['height']), int(row['width']), 3)}")
    return arr

"""Checks one image file and plans its crop (the per-item work of image ingest, stage 10), and the
process pool that runs those checks without letting one crashing decoder stop the run.

Runs inside the ingest process pool, so it is a pure function of (file, settings) that never
raises for a bad file: every failure becomes a `Reject(reason, detail)` with a short, stable
reason code (counted in the stage summary) and a human-readable detail.

Choices the paper leaves open, recorded here:
- The format is found from the file's first bytes, never from its name (a PNG named .jpg is a PNG;
  a text file named .jpg is `not_an_image`). LHQ's archive member names are not documented.
- The whole image is decoded (`Image.load()`), not only the header, so truncated files are caught
  here and not halfway through tokenisation.
- Width, height and crop are in EXIF-oriented pixels (what `pipeline.formats.manifest.load_image_crop`
  reads back). A file whose EXIF cannot be applied is rejected (`bad_exif`), because the later
  reader would fail on it too.
- Decompression bombs: PIL's MAX_IMAGE_PIXELS is set from the config and any image above it is
  rejected (`decompression_bomb`) before its pixels are decoded (PIL only warns between 1x and 2x
  the limit; the warning is turned into a rejection).
- Animated images (GIF, APNG, animated WebP): rejected by default (`animated`): in a landscape
  photo set they are banners or clips with a 256-colour palette, not photographs. With
  `animated: first_frame` the first frame is used instead. Other multi-frame files are not
  animations and always give their first frame: a camera's MPO "JPEG" (the photo plus a preview
  or a second stereo view) and a multi-page TIFF.
- Crop: the largest centred square (side = the short side), or with `crop: random` a square at a
  position drawn from a generator seeded by (run seed, item id), so the plan is reproducible
  per item whatever the order or number of workers. The manifest's `size` says what side the
  crop is resized to when it is read.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("ingest_images")

# Magic numbers of the formats PIL decodes that a photo set plausibly holds.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG2000"),
)
# Archives are named separately so that the reason tells the user to extract them.
_ARCHIVE_MAGIC: tuple[tuple[bytes, int], ...] = (
    (b"PK\x03\x04", 0),
    (b"\x1f\x8b", 0),
    (b"7z\xbc\xaf\x27\x1c", 0),
    (b"Rar!\x1a\x07", 0),
    (b"ustar", 257),
)
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})  # PIL's names for the formats that animate
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
              "JPEG2000": ".jp2", "WEBP": ".webp"}
HEADER_BYTES = 512


@dataclass(frozen=True)
class CheckSettings:
    min_side: int = 1024
    size: int = 1024
    crop: str = "center"  # "center" | "random"
    seed: int = 0
    max_image_pixels: int | None = 89_478_485  # PIL's own default
    animated: str = "reject"  # "reject" | "first_frame"


@dataclass(frozen=True)
class Accepted:
    width: int
    height: int
    crop: tuple[int, int, int, int]
    format: str


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str


def sniff_format(header: bytes) -> str | None:
    """The image format from a file's first bytes, or None."""
    for magic, offset, name in _MAGIC:
        if header[offset:offset + len(magic)] == magic:
            return name
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    return None


def is_archive(header: bytes) -> bool:
    return any(header[off:off + len(m)] == m for m, off in _ARCHIVE_MAGIC)


def crop_plan(width: int, height: int, mode: str, seed: int, item_id: str) -> tuple[int, int, int, int]:
    """[x0, y0, x1, y1] of a square of side min(width, height) inside the oriented image."""
    side = min(width, height)
    if mode == "center":
        x0, y0 = (width - side) // 2, (height - side) // 2
    elif mode == "random":
        digest = hashlib.sha256(f"crop:{seed}:{item_id}".encode()).digest()
        x0 = int.from_bytes(digest[:8], "big") % (width - side + 1)
        y0 = int.from_bytes(digest[8:16], "big") % (height - side + 1)
    else:
        raise ValueError(f"unknown crop mode {mode!r} (use 'center' or 'random')")
    return (x0, y0, x0 + side, y0 + side)


def check_image(path: str | os.PathLike, item_id: str, settings: CheckSettings) -> Accepted | Reject:
    """Decode `path` fully and plan its crop, or say why it cannot be used. Never raises for bad files."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from pipeline.formats.manifest import to_rgb

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Reject("missing", f"{path}: no such file (broken link or removed during the run)")
    except OSError as e:
        return Reject("unreadable", f"{path}: {e}")
    if st.st_size == 0:
        return Reject("empty_file", f"{path}: zero bytes")
    try:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
    except OSError as e:
        return Reject("unreadable", f"{path}: {e}")
    fmt = sniff_format(header)
    if fmt is None:
        if is_archive(header):
            return Reject("archive_not_extracted", f"{path}: an archive; extract it and ingest the folder")
        return Reject("not_an_image", f"{path}: content is no known image format (starts {header[:8]!r})")

    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x the limit; any image above the limit is rejected.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                frames = int(getattr(im, "n_frames", 1) or 1)
                if frames > 1:
                    if im.format in ANIMATED_FORMATS and settings.animated == "reject":
                        return Reject("animated", f"{path}: animated {im.format} with {frames} frames")
                    im.seek(0)
                im.load()  # full decode: truncated data fails here, not in the tokenizer
                try:
                    oriented = ImageOps.exif_transpose(im)
                except Exception as e:  # malformed EXIF blocks raise many types inside PIL
                    return Reject("bad_exif", f"{path}: EXIF orientation cannot be applied ({e})")
                width, height = oriented.size
                if min(width, height) < settings.min_side:
                    return Reject("too_small", f"{path}: {width}x{height}, short side < {settings.min_side}")
                try:
                    to_rgb(oriented)
                except Exception as e:
                    return Reject("unsupported_mode", f"{path}: mode {im.mode} cannot become RGB ({e})")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return Reject("decompression_bomb", f"{path}: {e}")
    except UnidentifiedImageError as e:
        return Reject("undecodable", f"{path}: {fmt} signature but PIL cannot parse it ({e})")
    except MemoryError:
        return Reject("decompression_bomb", f"{path}: decoding ran out of memory")
    except Exception as e:  # PIL's decoders raise OSError, SyntaxError, struct.error, ValueError, ...
        reason = "truncated" if "truncated" in str(e).lower() else "decode_error"
        return Reject(reason, f"{path}: {type(e).__name__}: {e}")
    return Accepted(width=width, height=height, format=fmt,
                    crop=crop_plan(width, height, settings.crop, settings.seed, item_id))


class IsolatingPool:
    """`map` over a process pool that survives a worker dying (e.g. a decoder segfault or OOM kill).

    When the pool breaks, the unit is redone one item at a time in a fresh pool, so the item that
    kills its worker is singled out and handed to `on_crash`, and the others are processed normally.
    With workers == 0 everything runs in this process (no isolation; for debugging).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _fresh(self, workers: int) -> ProcessPoolExecutor:
        self.close()
        # spawn: the parent may hold threads (tqdm's monitor), which fork does not copy safely
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, fn: Callable, items: Sequence, on_crash: Callable[[Any], Any],
            progress: Callable[[], None] = lambda: None) -> list:
        if self.workers == 0:
            out = []
            for it in items:
                out.append(fn(it))
                progress()
            return out
        pool = self._pool or self._fresh(self.workers)
        out = []
        try:
            for r in pool.map(fn, items, chunksize=max(1, min(16, len(items) // (4 * self.workers)))):
                out.append(r)
                progress()
            return out
        except BrokenProcessPool:
            log.warning("a decode worker died; redoing this chunk one item at a time to find the culprit")
            self.close()
        reported = len(out)
        out = []
        for i, it in enumerate(items):
            pool = self._pool or self._fresh(1)
            try:
                out.append(pool.submit(fn, it).result())
            except BrokenProcessPool:
                self.close()
                out.append(on_crash(it))
            if i >= reported:
                progress()
        self.close()  # the next unit gets a full-width pool again
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

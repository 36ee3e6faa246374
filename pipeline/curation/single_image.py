"""Stage 12: one large image (or a few) as the whole data set, the paper's Figure 1 set-up.

    python -m pipeline.curation.single_image --config run.yaml

Config section `single_image` (a run without it has nothing to do here):

    single_image:
      image: scroll.png            # the one key to set: a path, or a list of a few paths
      caption: ""                  # one caption for every image (a model with text can use it)
      holdout_side: right          # the end of each image whose strip is held out: right, left, down, up
      holdout_fraction: 0.1        # the strip's share of the image along that side...
      holdout_pixels: null         # ...or its thickness in pixels (wins when set); 0 = no held-out strip
      max_image_pixels: 1000000000 # decompression-bomb limit (2048 x 38912 is 80M pixels)
      mirror: false                # also use each image mirrored left-right (twice the data for a
                                   # landscape; wrong for a scroll with writing)

Writes run_dir/data/single_image/: `<id>.npy`, the oriented RGB pixels of each image as an uint8
array [H, W, 3] that later stages memory-map (the VQGAN's random crops, the tiled tokenisation), and
`manifest.parquet` (pipeline.formats.manifest, SINGLE_IMAGE_COLUMNS) with each image's usable box,
training box and held-out box in pixels.

Choices:
- The same checks as image ingest (pipeline.curation.image_checks: content sniffing, full decode,
  EXIF orientation, any mode to RGB, decompression bombs), but a bad file is an error, not a
  reject: with one image there is no data set left without it.
- The usable box starts at the top-left corner and its sides are cut down to multiples of the
  VQGAN's factor, so every code covers whole pixels. The held-out strip is rounded to whole patches
  (VQGAN factor x the model's patch along that side) so that validation windows tile it exactly; the
  rest of the box is the training box.
- Resuming: when the manifest exists and records the same settings and the same source files
  (sha256), nothing is done.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline import atomic
from pipeline.config import ConfigError, RunConfig, load_config, to_dict
from pipeline.curation.image_checks import CheckSettings, Reject, check_image
from pipeline.formats import manifest, vqgan_io
from pipeline.formats.manifest import SINGLE_IMAGE_COLUMNS, SINGLE_IMAGE_MANIFEST
from pipeline.formats.renderer_io import model_config
from pipeline.ranks import rank_info

log = logging.getLogger("single_image")
SECTION = "single_image"
SIDES = ("right", "left", "down", "up")


@dataclass
class SingleImageSection:
    image: str | list[str] | None = None
    caption: str = ""
    holdout_side: Literal["right", "left", "down", "up"] = "right"
    holdout_fraction: float = 0.1
    holdout_pixels: int | None = None
    mirror: bool = False  # also train on the image mirrored left-right (a second image; the canvas order keeps the
    # original first)
    max_image_pixels: int = 1_000_000_000

    def __post_init__(self):
        if not self.image:
            raise ValueError("image is required: the path of the image (or a list of a few paths)")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if self.holdout_pixels is not None and self.holdout_pixels < 0:
            raise ValueError(f"holdout_pixels must be >= 0, got {self.holdout_pixels}")
        if self.max_image_pixels < 1:
            raise ValueError("max_image_pixels must be >= 1")

    @property
    def paths(self) -> list[str]:
        return [self.image] if isinstance(self.image, str) else list(self.image)


def read_section(cfg: RunConfig) -> SingleImageSection:
    return cfg.section(SECTION, SingleImageSection, required=True)


def out_dir(cfg: RunConfig) -> Path:
    return cfg.run_dir / Path(SINGLE_IMAGE_MANIFEST).parent


def split_boxes(width: int, height: int, factor: int, patch_px: tuple[int, int], sec: SingleImageSection,
                where: str) -> tuple[list[int], list[int], list[int]]:
    """(usable box, training box, held-out box or []) in pixels, each [x0, y0, x1, y1]."""
    w, h = width // factor * factor, height // factor * factor
    box = [0, 0, w, h]
    along_x = sec.holdout_side in ("right", "left")
    length, unit = (w, patch_px[1]) if along_x else (h, patch_px[0])
    strip = sec.holdout_pixels if sec.holdout_pixels is not None else round(sec.holdout_fraction * length)
    strip = int(round(strip / unit)) * unit if strip else 0
    if strip and sec.holdout_pixels is None:
        strip = max(strip, unit)  # a fraction asks for some held-out data: at least one patch
    if strip >= length:
        raise ConfigError(f"{where}: the held-out strip ({strip} px, whole patches of {unit} px) leaves nothing to "
                          f"train on in a usable side of {length} px; lower holdout_fraction / holdout_pixels")
    if not strip:
        return box, list(box), []
    if sec.holdout_side == "right":
        return box, [0, 0, w - strip, h], [w - strip, 0, w, h]
    if sec.holdout_side == "left":
        return box, [strip, 0, w, h], [0, 0, strip, h]
    if sec.holdout_side == "down":
        return box, [0, 0, w, h - strip], [0, h - strip, w, h]
    return box, [0, strip, w, h], [0, 0, w, strip]


def _decode(path: Path, max_pixels: int) -> np.ndarray:
    """Oriented RGB uint8 [H, W, 3] of a file that check_image accepted."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = max_pixels
    with Image.open(path) as im:
        im.seek(0)
        return np.asarray(manifest.to_rgb(ImageOps.exif_transpose(im)), dtype=np.uint8)


def mirrored(box: list[int], width: int) -> list[int]:
    """A box [x0, y0, x1, y1] of an image `width` pixels wide, in the left-right mirror image ([] stays [])."""
    return [width - box[2], box[1], width - box[0], box[3]] if box else []


def _store(folder: Path, row: dict, pixels: np.ndarray) -> dict:
    """Write `pixels` as the row's .npy (atomically); returns the row with its `pixels` path."""
    target = folder / f"{row['id']}.npy"
    with atomic.atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(pixels))
    return {**row, "pixels": str(target)}


def ingest(cfg: RunConfig, sec: SingleImageSection) -> list[dict]:
    """Check, decode and store every image of the section; returns the manifest rows."""
    where = f"{cfg.path}: {SECTION}"
    factor = vqgan_io.architecture(cfg).downsample
    hp, wp, _ = model_config(cfg).patch
    folder = out_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(folder)
    sources = [cfg.resolve(p) for p in sec.paths]
    settings = {"section": to_dict(sec), "factor": factor, "patch": [hp, wp],
                "sha256": [atomic.sha256_file(p) if p.is_file() else None for p in sources]}
    for p, sha in zip(sources, settings["sha256"]):
        if sha is None:
            raise ConfigError(f"{where}.image: file not found: {p}")
    manifest_path = cfg.run_dir / SINGLE_IMAGE_MANIFEST
    settings_path = folder / "settings.json"
    if manifest_path.is_file() and settings_path.is_file() and atomic.read_json(settings_path) == settings:
        rows = manifest.read_rows(manifest_path, SINGLE_IMAGE_COLUMNS)
        if all(Path(r["pixels"]).is_file() for r in rows):
            log.info("%s is up to date (%d image(s)); nothing to do", manifest_path, len(rows))
            return rows
    rows = []
    check = CheckSettings(min_side=factor * max(hp, wp), size=1, max_image_pixels=sec.max_image_pixels,
                          animated="first_frame")
    for path, sha in zip(sources, settings["sha256"]):
        image_id = manifest.stable_id("single", sha)
        verdict = check_image(path, image_id, check)
        if isinstance(verdict, Reject):
            raise ConfigError(f"{where}.image: {path} cannot be used ({verdict.reason}): {verdict.detail}")
        pixels = _decode(path, sec.max_image_pixels)
        h, w = pixels.shape[:2]
        box, train, holdout = split_boxes(w, h, factor, (hp * factor, wp * factor), sec, where)
        row = {"id": image_id, "path": str(path), "source": str(path), "sha256": sha, "width": w, "height": h,
               "box": box, "train_box": train, "holdout_box": holdout, "caption": sec.caption}
        rows.append(_store(folder, row, pixels))
        log.info("%s: %d x %d px -> %s; training box %s, held-out box %s", path, w, h, image_id, train,
                 holdout or "none")
        if sec.mirror:  # the usable box mirrored left-right, with its boxes mirrored too
            bw, bh = box[2], box[3]
            rows.append(_store(folder, {**row, "id": f"{image_id}-mirror", "source": f"{path} (mirrored)",
                                        "width": bw, "height": bh, "box": list(box), "train_box": mirrored(train, bw),
                                        "holdout_box": mirrored(holdout, bw)}, pixels[:bh, :bw][:, ::-1]))
        del pixels
    manifest.write_rows(manifest_path, rows, SINGLE_IMAGE_COLUMNS)
    atomic.write_json(settings_path, settings)  # last: the stage's done-marker
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if not cfg.has(SECTION):
            log.info("%s has no '%s' section: not a single-image run, nothing to do", cfg.path, SECTION)
            return 0
        if not rank_info().is_main:  # seconds of work: rank 0 does it, the others return
            return 0
        rows = ingest(cfg, read_section(cfg))
    except (ConfigError, manifest.ManifestError, OSError) as e:
        log.error("%s", e)
        return 1
    log.info("single-image source: %d image(s) in %s", len(rows), cfg.run_dir / SINGLE_IMAGE_MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())

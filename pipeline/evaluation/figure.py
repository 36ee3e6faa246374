"""Pictures of a long sample that fit a page: the strip wrapped into rows, and full-resolution crops.

    python -m pipeline.evaluation.figure --config run.yaml --sample continuation --out docs/single_image
        [--row-width 2304] [--scale 0.5] [--crop 512] [--at 0.5 1.0]

A continuation 8x as long as a 2304-pixel source is 20736 pixels wide: no page shows that. This writes
  <out>_overview.png  the sample cut into rows of `row-width` pixels, scaled by `scale`, 4-pixel white
                      gaps between rows; for an extension, a red tick under the columns where the given
                      image ends (the seam);
  <out>_seam.png      full resolution, `crop` pixels either side of the seam (the given image's last
                      pixels, then the first generated ones), with the same tick;
  <out>_far.png       full resolution, `crop` pixels wide at each fraction `at` of the generated part;
  <out>_compare.png   for an extension of a single-image run's canvas (stage 12's manifest is there), three
                      rows of 2 x `crop` pixels: the source's own pixels just before the seam, the same
                      place as the sample shows it (its codes decoded: the VQGAN's reconstruction), and
                      the generated part at its middle. The first two differ only by the VQGAN.
Each is a plain PNG (atomic write); the sample's own PNG and its JSON sidecar are only read.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import atomic

log = logging.getLogger("figure")
GAP = 4
TICK = (220, 30, 30)


def seam_column(sidecar: dict) -> int | None:
    """The pixel column where an extension to the right or left meets its given image (None otherwise)."""
    if sidecar.get("mode") != "extend" or sidecar.get("side") not in ("right", "left"):
        return None
    given_w = int(sidecar["given_size"][1])
    return given_w if sidecar["side"] == "right" else int(sidecar["size"][1]) - given_w


def _with_tick(strip: np.ndarray, column: int | None) -> np.ndarray:
    """`strip` [H, W, 3] with a GAP-high band under it, red from `column - 2` to `column + 2`."""
    band = np.full((GAP, strip.shape[1], 3), 255, dtype=np.uint8)
    if column is not None and 0 <= column <= strip.shape[1]:
        band[:, max(0, column - 2):column + 2] = TICK
    return np.concatenate([strip, band])


def overview(image: np.ndarray, row_width: int, scale: float, seam: int | None) -> np.ndarray:
    rows = []
    for x0 in range(0, image.shape[1], row_width):
        part = image[:, x0:x0 + row_width]
        if part.shape[1] < row_width:
            part = np.concatenate([part, np.full((part.shape[0], row_width - part.shape[1], 3), 255, np.uint8)], 1)
        rows.append(_with_tick(part, None if seam is None or not x0 <= seam < x0 + row_width else seam - x0))
    sheet = np.concatenate(rows)
    if scale != 1:
        size = (max(1, round(sheet.shape[1] * scale)), max(1, round(sheet.shape[0] * scale)))
        sheet = np.asarray(Image.fromarray(sheet).resize(size, Image.Resampling.LANCZOS))
    return sheet


def crops(image: np.ndarray, crop: int, seam: int | None, at: list[float], generated: tuple[int, int]):
    """(seam crop or None, far crops side by side or None) at full resolution."""
    seam_png = None
    if seam is not None:
        lo = max(0, seam - crop)
        seam_png = _with_tick(image[:, lo:seam + crop], seam - lo)
    far = []
    g0, g1 = generated
    for frac in at:
        x = int(round(g0 + frac * (g1 - g0 - crop)))
        far.append(image[:, max(g0, x):max(g0, x) + crop])
        far.append(np.full((image.shape[0], GAP, 3), 255, dtype=np.uint8))
    return seam_png, (np.concatenate(far[:-1], axis=1) if far else None)


def write(path: Path, pixels: np.ndarray) -> None:
    with atomic.atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", optimize=True)
    log.info("%s: %d x %d px, %.0f KiB", path, pixels.shape[1], pixels.shape[0], path.stat().st_size / 1024)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--sample", required=True, help="the sample's name (samples/<name>.png and .json)")
    ap.add_argument("--samples", default=None, help="samples folder (default run_dir/samples)")
    ap.add_argument("--out", required=True, help="path prefix of the pictures")
    ap.add_argument("--row-width", type=int, default=2304)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--at", type=float, nargs="*", default=[0.5, 1.0],
                    help="fractions of the generated part where the far crops are taken")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        folder = cfg.resolve(args.samples) if args.samples else cfg.run_dir / "samples"
        png, sidecar_path = folder / f"{args.sample}.png", folder / f"{args.sample}.json"
        if not png.is_file() or not sidecar_path.is_file():
            raise ConfigError(f"{folder}: no sample {args.sample!r} (its .png and .json)")
        if args.row_width < 1 or args.crop < 1 or not 0 < args.scale <= 1:
            raise ConfigError("--row-width and --crop must be >= 1, --scale in (0, 1]")
        sidecar = atomic.read_json(sidecar_path)
        Image.MAX_IMAGE_PIXELS = None  # our own sample, not an untrusted file
        with Image.open(png) as im:
            image = np.asarray(im.convert("RGB"))
    except (ConfigError, OSError, ValueError) as e:
        log.error("%s", e)
        return 1
    seam = seam_column(sidecar)
    generated = (0, image.shape[1])
    if seam is not None:
        generated = (seam, image.shape[1]) if sidecar["side"] == "right" else (0, seam)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write(out.with_name(out.name + "_overview.png"), overview(image, args.row_width, args.scale, seam))
    seam_png, far_png = crops(image, args.crop, seam, args.at, generated)
    if seam_png is not None:
        write(out.with_name(out.name + "_seam.png"), seam_png)
    if far_png is not None:
        write(out.with_name(out.name + "_far.png"), far_png)
    source = _source_pixels(cfg, sidecar)
    if source is not None and seam is not None and sidecar["side"] == "right":
        write(out.with_name(out.name + "_compare.png"), compare(source, image, seam, 2 * args.crop, generated))
    return 0


def _source_pixels(cfg, sidecar: dict) -> np.ndarray | None:
    """The given image's own pixels when the sample extends canvas 0 of this run's single image, else None."""
    from pipeline.formats import manifest

    path = cfg.run_dir / manifest.SINGLE_IMAGE_MANIFEST
    given = (sidecar.get("input") or {}).get("path") or ""
    if not path.is_file() or "single_image" not in given or (sidecar["input"].get("index") or 0) != 0:
        return None
    row = manifest.read_rows(path, manifest.SINGLE_IMAGE_COLUMNS)[0]
    x0, y0, x1, y1 = row["box"]
    return np.asarray(manifest.open_pixels(row)[y0:y1, x0:x1])


def compare(source: np.ndarray, image: np.ndarray, seam: int, width: int, generated: tuple[int, int]) -> np.ndarray:
    """Rows: source pixels before the seam, the sample there (decoded codes), the middle of the generated part."""
    width = min(width, seam, generated[1] - generated[0])
    mid = generated[0] + (generated[1] - generated[0] - width) // 2
    rows = [source[:, seam - width:seam], image[:, seam - width:seam], image[:, mid:mid + width]]
    gap = np.full((GAP, width, 3), 255, dtype=np.uint8)
    return np.concatenate([rows[0], gap, rows[1], gap, rows[2]])


if __name__ == "__main__":
    raise SystemExit(main())

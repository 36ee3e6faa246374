"""Images/s through image ingest (stage 10) on the CPU: full decode, EXIF, mode check, crop plan.

    python -m pipeline.bench ingest [--images 48] [--width 1536 --height 1024] [--workers 2] [--format JPEG]

Writes synthetic landscape-like photos (smooth gradients plus texture, so that JPEG sizes and decode
times resemble real photographs; LHQ1024 files are ~1024x1024 JPEGs) into a temporary folder, then
times `pipeline.curation.ingest_images.run` over them twice: `cold` (every chunk processed) and `resumed` (a
re-run that finds every chunk finished and only lists the folder). Run it on an otherwise idle
machine: the figure is per machine, not per core.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _photo(w: int, h: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
    sky, ground = rng.uniform(60, 230, 3), rng.uniform(20, 160, 3)
    base = (1 - y) * sky + y * ground + 25 * np.sin(6.3 * x * rng.uniform(1, 4) + rng.uniform(0, 6))
    texture = rng.normal(0, 12, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench ingest")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--height", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--format", default="JPEG", choices=["JPEG", "PNG", "WEBP"])
    args = ap.parse_args(argv)

    from pipeline.curation.ingest_images import ImageSource, IngestImagesConfig, run
    from pipeline.ranks import RankInfo

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        total_bytes = 0
        for i in range(args.images):
            p = src / f"{i:06d}.{args.format.lower()}"
            options = {"quality": 95} if args.format == "JPEG" else {}
            _photo(args.width, args.height, i).save(p, args.format, **options)
            total_bytes += p.stat().st_size
        cfg = IngestImagesConfig(sources=[ImageSource(kind="folder", path=str(src))],
                                 min_side=min(args.width, args.height), size=1024, workers=args.workers,
                                 chunk_size=args.chunk_size)
        one = RankInfo(rank=0, world_size=1, local_rank=0)
        t0 = time.perf_counter()
        summary = run(cfg, Path(tmp) / "run", 0, Path, ranks=one)
        cold = time.perf_counter() - t0
        # steady state: the chunks after the first (which also waits for the decode processes to start)
        markers = sorted((Path(tmp) / "run/data/images/chunks").glob("chunk-*.done"))[1:]
        stats = [json.loads(m.read_text()) for m in markers]
        steady = sum(s["seen"] for s in stats) / max(1e-9, sum(s["seconds"] for s in stats)) if stats else 0.0
        t0 = time.perf_counter()
        run(cfg, Path(tmp) / "run", 0, Path, ranks=one)
        resumed = time.perf_counter() - t0
    if summary["kept"] != args.images:
        raise RuntimeError(f"bench: only {summary['kept']} of {args.images} images kept: {summary['rejected']}")
    return {
        "benchmark": "ingest_images", "images": args.images, "size": f"{args.width}x{args.height}",
        "format": args.format, "mean_file_kib": round(total_bytes / args.images / 1024, 1),
        "workers": args.workers, "cpu_count": os.cpu_count(), "chunk_size": args.chunk_size,
        "cold_seconds": round(cold, 3), "images_per_s": round(args.images / cold, 2),
        "steady_images_per_s": round(steady, 2),
        "resumed_seconds": round(resumed, 3),
        "note": "images_per_s = images / cold_seconds, which includes starting the decode processes; "
                "steady_images_per_s leaves out the first chunk (what a 90k-image run sees)",
    }

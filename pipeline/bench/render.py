"""Sampling speed of trained renderers: patches/s of whole images, several exports timed in turns.

    python -m pipeline.bench render --export A/train/export B/train/export [--codes 16 16] [--batch 1]
                                    [--repeats 3] [--direction down-right-forward] [--threads N]

Each export (pipeline.formats.renderer_io) generates an unconditional image of `--codes` H x W VQGAN
codes (its own patch grid: H/h_p x W/w_p patches) with generate() (paper Algorithm 2, AR with its
key/value cache, NAR in one pass, P-NAR in the model's `pnar_steps`), at the default sampling settings.
After one warm-up patch each, the exports take turns, one image each per round, and each keeps its
median: a shared machine whose speed drifts slows them all alike, so the ratios stay comparable. The
ablation harness (pipeline.ablation) reads `speed_vs_first` (how many times faster than the first
export makes a whole image; the same as the ratio of patches/s when the patch sizes are equal).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.config import SamplingConfig
from model.directions import Grid
from model.patches import patch_grid
from pipeline import atomic
from pipeline.bench.timing import sync
from pipeline.formats.renderer_io import CONFIG, load_renderer
from pipeline.sampling.generate import CodeCollector, generate


def image_seconds(model, grid: Grid, args, device, seed: int) -> float:
    start = time.perf_counter()
    generate(model, grid, args.direction, CodeCollector(), batch=args.batch, sampling=SamplingConfig(),
             generator=torch.Generator(device=device).manual_seed(seed))
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench render", description=__doc__.splitlines()[0])
    ap.add_argument("--export", nargs="+", required=True, help="renderer export folders")
    ap.add_argument("--codes", type=int, nargs=2, default=[16, 16], metavar=("H", "W"),
                    help="image size in VQGAN codes (default 16 16: the demo's 128 x 128 images)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="rounds (the median is kept)")
    ap.add_argument("--direction", default="down-right-forward")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit("--batch and --repeats must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    models, grids, rows = [], [], []
    for folder in args.export:
        model, _ = load_renderer(folder, device)
        grid = patch_grid((1, *args.codes), model.cfg.patch)
        models.append(model)
        grids.append(grid)
        rows.append({"export": str(folder), "renderer_sha256": atomic.read_json(f"{folder}/{CONFIG}")["sha256"],
                     "renderer": model.cfg.renderer, "parameters": model.num_parameters(),
                     "patch": list(model.cfg.patch), "grid": [grid.H, grid.W], "patches": len(grid)})
    rounds: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            image_seconds(model, Grid(1, 1), args, device, 0)  # warm-up
        for r in range(args.repeats):
            for i, (model, grid) in enumerate(zip(models, grids)):
                rounds[i].append(image_seconds(model, grid, args, device, r))
    for row, seconds, model in zip(rows, rounds, models):
        mid = statistics.median(seconds)
        row.update(seconds_per_image=round(mid, 4), rounds_seconds=[round(s, 4) for s in seconds],
                   patches_per_s=round(args.batch * row["patches"] / mid, 2),
                   tokens_per_s=round(args.batch * row["patches"] * model.cfg.tokens_per_patch / mid, 1))
    for row in rows:
        row["speed_vs_first"] = round(rows[0]["seconds_per_image"] / row["seconds_per_image"], 3)
    return {"device": str(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__, "codes": list(args.codes), "batch": args.batch, "repeats": args.repeats,
            "direction": args.direction, "exports": rows}

"""Sampler benchmark: AR cache vs sliding window, NAR / P-NAR speed, memory vs width, image times.

    python -m pipeline.bench sample                       # CPU: tiny model, small patches
    python -m pipeline.bench sample --device cuda         # GPU: base model, paper patches, image times

Random weights throughout (speed and memory do not depend on them). Each part's figures are also
written to stderr as one `[bench sample] {...}` line as soon as the part is done.
- ar_cache: tokens/s of AR sampling with the key/value cache against the taming-style sliding
  window that re-runs the whole window (context and prefix) for every token
  (`renderer.render(..., use_cache=False)`), on the same model and the same patch: an interior
  patch of a Down-Right grid whose pool was primed teacher-forced, so the context is the full
  nearby window. Reported per batch size, with the ratio, for each `--decode` mode of the cached
  step (model.decoding: eager, compiled, CUDA graph); the sliding window always runs eagerly. The
  ways take turns, round after round, and each keeps its median.
- nar / pnar: patches/s of generate() on a small grid (the same shapes).
- memory_vs_width: Down-Right sampling (NAR, whose pool holds exactly what AR's holds) with the
  streaming VQGAN decode to disk at 2x .. 16x the training width; the sampler's own peak of held
  bytes and, on CUDA, the peak CUDA memory above the models' weights.
- images (CUDA): seconds for 1024 x 1024 and 1024 x 4096 images with the base AR model and the
  f16 VQGAN: generation, decoding and the PNG, end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

from model.config import SamplingConfig, preset
from model.directions import Direction, Grid
from model.patches import get_patch
from model.pool import ContextPool
from model.renderer import Renderer
from model.vqgan import VQGAN
from model.vqgan import preset as vq_preset
from pipeline.bench.timing import sync
from pipeline.sampling.generate import CodeCollector, MemoryLedger, generate, slab_axis
from pipeline.sampling.stream_decode import Canvases, ImageStreamDecoder, write_png

# Every part of the bench walks the grid in one order: the cache bench primes the pool in it and
# renders in it, so the two must not drift apart.
ORDER = "down-right"


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings to a dict, values read as YAML scalars (numbers, booleans, lists)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(value)
    return out


def build(args, kind: str, device: torch.device) -> Renderer:
    overrides = {**args.set, "renderer": kind, "tie_embeddings": kind == "nar", "text_vocab_size": 0}
    if args.patch:
        overrides["patch"] = (args.patch[0], args.patch[1], 1)
    torch.manual_seed(0)
    return Renderer(preset(args.preset, **overrides)).to(device).eval()


def primed_context(model: Renderer, rows: int, batch: int, device: torch.device):
    """The pool context of an interior patch of a Down-Right grid, primed teacher-forced."""
    hp, wp, _ = model.cfg.patch
    eh, ew, _ = model.cfg.expand
    grid = Grid(rows, ew + 2)
    target = (min(rows - 1, eh), ew, 0)
    d = Direction.parse(ORDER)
    pool = ContextPool(grid, d, model.cfg.expand)
    codes = torch.randint(0, model.cfg.vocab_size, (batch, 1, rows * hp, grid.W * wp), device=device)
    for n in range(len(grid)):
        coord = d.coords(n, grid)
        if coord == target:
            return pool.context(coord, device)
        pool.add(coord, model.states_for(get_patch(codes, coord, model.cfg.patch), pool.context(coord, device),
                                         direction=d))
        pool.remove(coord)
    raise AssertionError("target patch not in grid")


# How the cached AR step runs (model.decoding): the name in the JSON and the sampling settings.
DECODE_MODES = {"eager": {}, "compiled": {"compile_decode": True}, "graph": {"cuda_graph": True},
                "compiled_graph": {"compile_decode": True, "cuda_graph": True}}


def render_seconds(model: Renderer, ctx, batch: int, device, **render_kwargs) -> float:
    start = time.perf_counter()
    model.render(ctx, batch=batch, generator=torch.Generator(device=device).manual_seed(0), direction=ORDER,
                 **render_kwargs)
    sync(device)
    return time.perf_counter() - start


class Failures:
    """What failed while benchmarking, kept so that one broken decode mode costs only its own figures.

    A mode that has never run on this machine (a CUDA graph on a new GPU, a compile) may fail; the
    bench then reports its error in place of its figures, times the other ways, prints the whole
    JSON and exits non-zero (`failed` in the result)."""

    def __init__(self):
        self.errors: dict[str, str] = {}

    def run(self, name: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), or None after recording why it failed (the traceback goes to stderr)."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # reported in the JSON and the exit status, not swallowed
            traceback.print_exc(file=sys.stderr)
            self.errors[name] = f"{type(e).__name__}: {e}"
            return None


def bench_ar_cache(args, device, failures: Failures) -> list[dict]:
    """Per batch size: the sliding window, the cache run in each decode mode, and each one's speed-up.

    The ways are timed in turns (one patch each per round, `--repeats` rounds, the median kept), so
    a machine whose speed drifts slows all of them alike and the ratios stay comparable. A way that
    fails is reported with its error and leaves the turns."""
    model = build(args, "ar", device)
    suffix = {mode: "" if mode == "eager" else f"_{mode}" for mode in args.decode}  # JSON keys: cache, cache_<mode>
    ways = {"sliding_window": {"use_cache": False}}
    for mode in args.decode:
        ways[f"cache{suffix[mode]}"] = {"sampling": SamplingConfig(**DECODE_MODES[mode])}
    out = []
    for batch in args.batches:
        ctx = primed_context(model, args.rows, batch, device)
        row = {"batch": batch, "context_patches": len(ctx.patches), "tokens_per_patch": model.cfg.tokens_per_patch}
        names = {way: f"ar_cache batch {batch} {way}" for way in ways}  # what a failure is reported as
        first = {way: failures.run(names[way], render_seconds, model, ctx, batch, device, **kw)  # compile, capture
                 for way, kw in ways.items()}
        rounds = {way: [] for way in ways}
        for _ in range(args.repeats):
            for way, kw in ways.items():
                if names[way] not in failures.errors:
                    seconds = failures.run(names[way], render_seconds, model, ctx, batch, device, **kw)
                    if seconds is not None:
                        rounds[way].append(seconds)
        for way, seconds in rounds.items():
            if names[way] in failures.errors:
                row[way] = {"error": failures.errors[names[way]]}
                continue
            mid = statistics.median(seconds)
            row[way] = {"seconds_per_patch": round(mid, 4), "first_patch_seconds": round(first[way], 3),
                        "tokens_per_s": round(batch * model.cfg.tokens_per_patch / mid, 1),
                        "rounds_seconds": [round(x, 4) for x in seconds]}
        for mode in args.decode:
            cache, window = row[f"cache{suffix[mode]}"], row["sliding_window"]
            if "error" not in cache and "error" not in window:
                row[f"speedup{suffix[mode]}"] = round(cache["tokens_per_s"] / window["tokens_per_s"], 2)
        out.append(row)
    return out


def bench_parallel(args, device) -> dict:
    out = {}
    grid = Grid(args.rows, 3)
    for kind in ("nar", "pnar"):
        model = build(args, kind, device)
        sampling = SamplingConfig(pnar_steps=args.pnar_steps)
        generate(model, Grid(1, 1), ORDER, CodeCollector(), sampling=sampling)  # warm-up
        stats = generate(model, grid, ORDER, CodeCollector(), sampling=sampling,
                         generator=torch.Generator(device=device).manual_seed(0))
        out[kind] = {"patches": len(grid), "seconds": round(stats.seconds, 3),
                     "patches_per_s": round(len(grid) / stats.seconds, 2),
                     **({"steps": args.pnar_steps} if kind == "pnar" else {})}
    return out


def stream_image(model, vq, grid: Grid, direction: str, folder: Path, device, ledger: MemoryLedger,
                 sampling=None, png: bool = False) -> dict:
    hp, wp, _ = model.cfg.patch
    d = Direction.parse(direction)
    axis = slab_axis(d, grid)
    code_hw = (grid.H * hp, grid.W * wp)
    f = vq.downsample
    start = time.perf_counter()
    with Canvases(folder, [(code_hw[0] * f, code_hw[1] * f, 3)]) as canvases:
        dec = ImageStreamDecoder(vq, code_hw, canvases.arrays, axis, model.cfg.patch[axis], model.cfg.patch[axis],
                                 ledger)
        stats = generate(model, grid, d, dec, sampling=sampling, ledger=ledger,
                         generator=torch.Generator(device=device).manual_seed(0))
        dec.finish()
        sync(device)
        generated = time.perf_counter()
        if png:
            write_png(folder / "bench.png", canvases.arrays[0])
    return {"generate_and_decode_s": round(generated - start, 3), "total_s": round(time.perf_counter() - start, 3),
            "pixels": [code_hw[0] * f, code_hw[1] * f], "stats": stats}


def bench_memory(args, device, vq) -> list[dict]:
    model = build(args, "nar", device)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for mult in args.widths:
            grid = Grid(args.rows, args.train_width * mult)
            ledger = MemoryLedger()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            r = stream_image(model, vq, grid, ORDER, Path(tmp), device, ledger)
            row = {"width_x": mult, "grid": [grid.H, grid.W], "pixels": r["pixels"],
                   "sampler_peak_bytes": ledger.peak, "at_peak": ledger.peak_breakdown,
                   "seconds": r["generate_and_decode_s"]}
            if device.type == "cuda":
                row["cuda_peak_bytes_above_weights"] = torch.cuda.max_memory_allocated(device) - base
            out.append(row)
    first = out[0]["sampler_peak_bytes"]
    for row in out:
        row["vs_first"] = round(row["sampler_peak_bytes"] / first, 4)
    return out


def bench_images(args, device, vq, failures: Failures) -> list[dict]:
    model = build(args, "ar", device)
    hp, wp, _ = model.cfg.patch
    f = vq.downsample
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for h_px, w_px in ((1024, 1024), (1024, 4096)):
            grid = Grid(h_px // (hp * f), w_px // (wp * f))
            name = f"images {h_px}x{w_px}"
            r = failures.run(name, stream_image, model, vq, grid, ORDER, Path(tmp), device, MemoryLedger(),
                             sampling=SamplingConfig(**DECODE_MODES[args.image_decode]), png=True)
            row = {"pixels": [h_px, w_px], "grid": [grid.H, grid.W], "patches": len(grid), "decode": args.image_decode}
            if r is None:
                out.append({**row, "error": failures.errors[name]})
                continue
            out.append({**row,
                        "generate_and_decode_s": r["generate_and_decode_s"], "with_png_s": r["total_s"],
                        "sampling_s": round(r["stats"].seconds, 3),
                        "tokens_per_s": round(r["stats"].tokens_generated / r["stats"].seconds, 1)})
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench sample", description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--preset", default=None, help="renderer preset (default: tiny on CPU, base on CUDA)")
    ap.add_argument("--patch", type=int, nargs=2, default=None, help="patch h_p w_p in codes (default: preset's)")
    ap.add_argument("--vqgan", default=None, help="VQGAN preset (default: tiny_f16 on CPU, f16_16384 on CUDA)")
    ap.add_argument("--batches", type=int, nargs="+", default=None, help="AR batch sizes (default 1, or 1 8 32)")
    ap.add_argument("--rows", type=int, default=None, help="grid rows = the training height in patches")
    ap.add_argument("--train-width", type=int, default=None, help="training width in patches")
    ap.add_argument("--widths", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3, help="rounds per way (the median is kept)")
    ap.add_argument("--pnar-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--decode", nargs="+", default=None, choices=list(DECODE_MODES),
                    help="how the cached AR step runs (default: eager on CPU; eager, graph, compiled_graph on CUDA)")
    ap.add_argument("--image-decode", default="eager", choices=list(DECODE_MODES),
                    help="decode mode of the cached AR step for the CUDA image times")
    ap.add_argument("--skip", nargs="*", default=[], choices=["ar_cache", "parallel", "memory", "images"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="model config overrides on the preset, e.g. d_model=256 n_layer=4 n_head=4")
    args = ap.parse_args(argv)
    args.set = parse_overrides(args.set)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.preset = args.preset or ("base" if cuda else "tiny")
    args.batches = args.batches or ([1, 8, 32] if cuda else [1])
    args.decode = args.decode or (["eager", "graph", "compiled_graph"] if cuda else ["eager"])
    if not cuda and any(DECODE_MODES[m].get("cuda_graph") for m in args.decode):
        raise SystemExit(f"--decode {' '.join(args.decode)}: CUDA graphs need --device cuda")
    reference = build(args, "ar", torch.device("cpu"))
    cfg = reference.cfg
    if args.rows is None or args.train_width is None:
        # base: the paper's 1024 x 1024 training images are 4 x 4 patches of 256 pixels
        args.rows = args.rows or (4 if args.preset != "tiny" else 2)
        args.train_width = args.train_width or args.rows
    vq_name = args.vqgan or ("f16_16384" if cuda else "tiny_f16")
    torch.manual_seed(0)
    vq = VQGAN(vq_preset(vq_name, n_embed=cfg.vocab_size)).to(device).eval()
    result = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "preset": args.preset, "overrides": args.set,
              "parameters": reference.num_parameters(), "patch": list(cfg.patch), "expand": list(cfg.expand),
              "vqgan": vq_name, "rows": args.rows, "train_width": args.train_width}
    failures = Failures()

    def finished(part: dict) -> None:
        # Each part's figures go to stderr as soon as they exist: a run cut off by a time limit keeps them.
        result.update(part)
        print(f"[bench sample] {json.dumps(part, sort_keys=True)}", file=sys.stderr, flush=True)

    with torch.inference_mode():
        if "ar_cache" not in args.skip:
            finished({"ar_cache": bench_ar_cache(args, device, failures)})
        if "parallel" not in args.skip:
            finished(bench_parallel(args, device))
        if "memory" not in args.skip:
            finished({"memory_vs_width": bench_memory(args, device, vq)})
        if cuda and "images" not in args.skip:
            finished({"images": bench_images(args, device, vq, failures)})
    if failures.errors:
        result["failed"] = failures.errors
    return result

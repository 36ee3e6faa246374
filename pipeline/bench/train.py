"""Training benchmark (JSON): `python -m pipeline.bench train [--preset tiny|base|large] [--device cpu|cuda] ...`

One process, one rank, a real DeepSpeed engine (ZeRO-2 by default; bf16 on CUDA) running the trainer's
own `train_batch` (render-and-optimize) on random codes - the data loader is not part of it:

- throughput: tokens/s, samples/s, seconds per optimizer step, MFU (pipeline.training.monitor's FLOPs formula
  and peak table) and peak memory, on a `--grid` H x W patch grid in the column order;
- per-patch stepping vs one step per batch: the same batches once with an optimizer step after every
  patch (Algorithm 1) and once with every patch's gradient accumulated into a single step (loss
  region "full"); `patch_vs_full_time_ratio` = time(per patch) / time(full) (the goal on a GPU is <= 1.10);
- memory as the image grows 1x -> 4x -> 16x wide in the column order (down-right-forward): peak
  memory per width (CUDA: allocator peak after a reset; CPU: the largest resident-set size seen
  during that width's batches) and the context pool's peak size in patches - flat when the pool
  forgets columns it can no longer reach.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

DS_BASE = {"zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": False},
           "optimizer": {"type": "Adam", "params": {}}, "steps_per_print": 10**9}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _engine(cfg, device, micro: int, gas: int, bf16: bool, torch_adam: bool):
    import deepspeed

    from model.renderer import Renderer
    from pipeline.training.settings import TrainSection, finalize_ds_config

    sec = TrainSection(micro_batch=micro, global_batch=micro, bf16=bf16)
    ds = {**DS_BASE, "optimizer": {"type": "Adam", "params": {"torch_adam": torch_adam}}}
    ds, _ = finalize_ds_config(ds, sec, 1, gas, "bench")
    torch.manual_seed(0)
    model = Renderer(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    return engine


def _batches(cfg, device, micro: int, grid, n: int, seed: int):
    from pipeline.training.data import MicroBatch

    g = torch.Generator().manual_seed(seed)
    hp, wp, fp = cfg.patch
    out = []
    for _ in range(n):
        codes = torch.randint(0, cfg.vocab_size, (micro, grid.F * fp, grid.H * hp, grid.W * wp), generator=g)
        ids = mask = None
        if cfg.has_text:
            ids = torch.randint(1, cfg.text_vocab_size, (micro, cfg.text_len), generator=g)
            mask = torch.ones_like(ids, dtype=torch.bool)
            ids, mask = ids.to(device), mask.to(device)
        out.append([MicroBatch(codes.to(device), ids, mask, [])])
    return out


def _run(engine, batches, grid, direction, cfg, device):
    """Seconds, optimizer steps, context tokens per patch and peak memory over the batches."""
    from pipeline.training.loop import train_batch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss, steps, contexts = _rss_bytes(), 0, []
    t0 = time.perf_counter()
    for micro in batches:
        before = engine.global_steps
        res = train_batch(engine, micro, grid, direction, cfg)
        steps += engine.global_steps - before
        contexts = res.context_tokens
        rss = max(rss, _rss_bytes())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss
    return seconds, steps, contexts, int(peak)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, base on CUDA)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--micro-batch", type=int, default=None, help="default 8 on CPU, 4 on CUDA")
    ap.add_argument("--grid", type=int, nargs=2, default=[4, 4], metavar=("H", "W"), help="patch grid")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16], help="width multiples for memory")
    ap.add_argument("--memory-grid", type=int, nargs=2, default=[2, 2], metavar=("H", "W"),
                    help="patch grid of the 1x image in the memory measurement")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args(argv)

    from model.config import preset
    from model.directions import Direction, Grid
    from model.pool import ContextPool
    from pipeline.training.monitor import patch_train_flops, peak_flops
    from pipeline.training.train import ensure_launcher_env

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    ensure_launcher_env()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    name = args.preset or ("base" if device.type == "cuda" else "tiny")
    cfg = preset(name)
    micro = args.micro_batch or (4 if device.type == "cuda" else 8)
    bf16 = device.type == "cuda" if args.bf16 == "auto" else args.bf16 == "on"
    torch_adam = device.type != "cuda"  # FusedAdam on GPUs; the CPU has no fused kernel
    direction = Direction.parse("down-right-forward")
    grid = Grid(*args.grid)
    peak, peak_src = peak_flops(device, bf16, args.peak_tflops)
    result: dict = {"preset": name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"cpu ({torch.get_num_threads()} threads)", "micro_batch": micro, "bf16": bf16,
                    "grid": list(args.grid), "direction": direction.name, "zero_stage": 2,
                    "peak_flops": peak, "peak_flops_source": peak_src, "torch": torch.__version__,
                    "deepspeed": deepspeed.__version__}

    tokens_per_batch = micro * len(grid) * cfg.tokens_per_patch
    timings = {}
    for region, gas in (("patch", 1), ("full", len(grid))):
        engine = _engine(cfg, device, micro, gas, bf16, torch_adam)
        if region == "patch":
            result["parameters"] = sum(p.numel() for p in engine.module.parameters())
        _run(engine, _batches(cfg, device, micro, grid, args.warmup, 1), grid, direction, cfg, device)
        secs, steps, contexts, mem = _run(engine, _batches(cfg, device, micro, grid, args.batches, 2), grid,
                                          direction, cfg, device)
        timings[region] = secs
        flops = args.batches * micro * sum(patch_train_flops(cfg, s) for s in contexts)
        result[region] = {"seconds": secs, "optimizer_steps": steps, "seconds_per_step": secs / max(1, steps),
                          "tokens_per_s": args.batches * tokens_per_batch / secs,
                          "samples_per_s": args.batches * micro / secs,
                          "model_tflops_per_s": flops / secs / 1e12,
                          "mfu": flops / secs / peak if peak else None, "peak_memory_bytes": mem}
        del engine
    result["patch_vs_full_time_ratio"] = timings["patch"] / timings["full"]

    engine = _engine(cfg, device, micro, 1, bf16, torch_adam)
    h0, w0 = args.memory_grid
    memory = []
    for k in args.widths:
        g = Grid(h0, w0 * k)
        secs, _, _, mem = _run(engine, _batches(cfg, device, micro, g, 1, 3 + k), g, direction, cfg, device)
        pool = ContextPool(g, direction, cfg.expand)
        for coord in direction.schedule(g):  # the pool's occupancy for this grid (what training holds)
            pool.add(coord, [torch.empty(0)])
            pool.remove(coord)
        memory.append({"width_multiple": k, "grid": [g.H, g.W], "patches": len(g), "peak_memory_bytes": mem,
                       "pool_peak_patches": pool.peak, "seconds_per_step": secs / len(g)})
    result["memory_vs_width"] = memory
    result["memory_growth_16x_over_1x"] = memory[-1]["peak_memory_bytes"] / memory[0]["peak_memory_bytes"]
    return result

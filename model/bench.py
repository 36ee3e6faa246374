"""Model benchmarks printing JSON: `python -m model.bench [--presets tiny base] [--device cpu]`.

- forward + backward seconds per patch for each preset, with a full window of context
  (the pool as it is in the middle of an image, e = (2, 2, 0): 12 context patches);
- select + add + remove seconds per patch as the grid grows from 4 to 256 patches wide in the
  column order (down-right-forward): it must stay flat, because the pool never holds more than
  the window needs.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.config import preset
from model.directions import Direction, Grid
from model.pool import ContextPool
from model.renderer import Renderer


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def patch_step(name: str, device: str, batch: int, dtype: torch.dtype, **overrides):
    """A renderer, Adam and a patch with a full window of context (the pool as it is in the middle of an
    image); returns (step, info): `step()` runs one forward + backward + Adam step and returns its seconds."""
    cfg = preset(name, **overrides)
    model = Renderer(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    grid = Grid(5, 5)
    d = Direction.parse("down-right-forward")
    pool = ContextPool(grid, d, cfg.expand)
    t = cfg.tokens_per_patch
    target = (2, 2, 0)
    for coord in d.schedule(grid):  # fill the pool with random states up to the centre patch
        if coord == target:
            break
        pool.add(coord, [torch.randn(batch, t, cfg.d_model, device=device) for _ in range(cfg.n_layer)])
        pool.remove(coord)
    ctx = pool.context(target, device)
    tokens = torch.randint(0, cfg.vocab_size, (batch, t), device=device)
    ids = mask = None
    if cfg.has_text:
        ids = torch.randint(1, cfg.text_vocab_size, (batch, min(16, cfg.text_len)), device=device)
        mask = torch.ones_like(ids, dtype=torch.bool)

    def step() -> float:
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            out = model(tokens, ctx, ids, mask)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - t0

    info = {"preset": name, "parameters": model.num_parameters(), "batch": batch, "tokens_per_patch": t,
            "context_tokens": ctx.length, "dtype": str(dtype).replace("torch.", "")}
    return step, info


def patch_step_seconds(name: str, device: str, batch: int, repeats: int, dtype: torch.dtype, **overrides) -> dict:
    step, info = patch_step(name, device, batch, dtype, **overrides)
    step()  # the first step warms up kernels and the allocator
    times = sorted(step() for _ in range(repeats))
    return {**info, "median_s_per_patch_step": times[len(times) // 2],
            "tokens_per_s": batch * info["tokens_per_patch"] / times[len(times) // 2]}


def pool_ops_seconds(widths: list[int], height: int = 4) -> list[dict]:
    out = []
    state = [torch.zeros(1, 1, 1)]
    for w in widths:
        grid = Grid(height, w)
        pool = ContextPool(grid, "down-right-forward", (2, 2, 0))
        sched = pool.direction.schedule(grid)
        t0 = time.perf_counter()
        for coord in sched:
            pool.context(coord)
            pool.add(coord, state)
            pool.remove(coord)
        dt = time.perf_counter() - t0
        out.append({"grid": f"{height}x{w}", "patches": len(sched), "us_per_patch": 1e6 * dt / len(sched),
                    "peak_pool_patches": pool.peak})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="rendering-model benchmarks (JSON)")
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    result = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
        "patch_step": [patch_step_seconds(p, args.device, args.batch, args.repeats, dtype) for p in args.presets],
        "pool_ops_vs_width": pool_ops_seconds([4, 16, 64, 256]),
    }
    if args.device.startswith("cuda"):
        result["peak_cuda_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

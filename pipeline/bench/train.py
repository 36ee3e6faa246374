"""Training benchmark (JSON): `python -m pipeline.bench train [--preset tiny|base|large] [--device cpu|cuda] ...`

One process, one rank, a real DeepSpeed engine (ZeRO-2 by default; bf16 on CUDA) running the trainer's
own `train_batch` (render-and-optimize) on random codes - the data loader is not part of it. For each
`--micro-batch` (one entry of `runs` each, also logged to stderr as `[bench train] {...}` when done):

- throughput: tokens/s, samples/s, seconds per optimizer step, MFU (pipeline.training.monitor's FLOPs formula
  and peak table), on a `--grid` H x W patch grid in the column order;
- per-patch stepping vs one step per batch: the same batches with an optimizer step after every patch
  (Algorithm 1) and with every patch's gradient accumulated into a single step (loss region "full"), the
  two engines taking turns batch by batch (a shared machine drifts); `patch_vs_full_time_ratio` = median
  batch time (per patch) / median batch time (full), the goal being <= 1.10; also the ratio of the totals, of
  the fastest batches, and on a CPU of the median process CPU time (with one thread, what other processes'
  load changes least), and `patch_vs_full_step_ratio`, from the breakdown below: the per-patch batch against
  the same batch with the one-step way's optimizer-step cost (the only work that differs);
- peak memory of each engine's first batch (CUDA: allocator peak less the other engine's resident memory;
  CPU: the process's resident set, both engines included);
- `breakdown`: seconds per patch step by phase of `train_batch` (context preparation, forward, backward,
  the optimizer step, bookkeeping, pool update) and of the trainer's per-batch logging (a real monitor
  writing tensorboard and metrics.jsonl to a temporary folder), with the device synchronised at every phase
  boundary (so these batches are a little slower than the timed ones); `optimizer_parts`: DeepSpeed's
  gradient reduce (bucket reduces inside backward, the reduce at the end of backward), overflow check, grad
  norm, clipping, update (Adam), parameter all-gather, each where the ZeRO stage has it;
- CUDA only, `host_syncs`: the operations that made the host wait for the device during one
  per-patch batch (torch.cuda.set_sync_debug_mode), counted by source line.

Then memory as the image grows 1x -> 4x -> 16x wide in the column order (down-right-forward): peak memory per
width and the context pool's peak size in patches - flat when the pool forgets columns it can no longer reach.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

from pipeline.bench.timing import sync
from pipeline.config import deep_merge

DS_BASE = {"zero_optimization": {"stage": 2, "contiguous_gradients": True, "overlap_comm": False},
           "optimizer": {"type": "Adam", "params": {}}, "steps_per_print": 10**9}

# DeepSpeed methods timed in the breakdown: (owner, name, label). Those a ZeRO stage lacks are left out.
OPTIMIZER_PARTS = [("engine", "allreduce_gradients", "reduce_end_of_backward"),
                   ("optimizer", "reduce_ipg_grads", "reduce_bucket"),
                   ("optimizer", "check_overflow", "overflow_check"),
                   ("optimizer", "scaled_global_norm", "grad_norm"),
                   ("optimizer", "unscale_and_clip_grads", "clipping"),
                   ("optimizer", "_optimizer_step", "update"),
                   ("stage_1_and_2", "all_gather_dp_groups", "allgather")]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _dotted(pairs: list[str]) -> dict:
    """KEY.SUB=VALUE pairs (VALUE read as JSON when it parses) as a nested dict."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = _parse_value(value)
    return out


def _engine(cfg, micro: int, gas: int, bf16: bool, ds_extra: dict):
    import deepspeed

    from model.renderer import Renderer
    from pipeline.training.settings import TrainSection, finalize_ds_config

    sec = TrainSection(micro_batch=micro, global_batch=micro, bf16=bf16)
    ds, _ = finalize_ds_config(deep_merge(DS_BASE, ds_extra), sec, 1, gas, "bench")
    torch.manual_seed(0)
    model = Renderer(cfg)
    if ds["zero_optimization"]["stage"] == 3:
        from pipeline.training.loop import mark_zero3_leaf_modules

        mark_zero3_leaf_modules(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds)
    return engine, ds


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


def _timed_batch(engine, micro, grid, direction, cfg, device, clock=None, cpu_seconds: list | None = None):
    """Wall seconds of one batch (and, appended to `cpu_seconds`, the process's CPU seconds)."""
    from pipeline.training.loop import train_batch

    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train_batch(engine, micro, grid, direction, cfg, clock=clock)
    sync(device)
    if cpu_seconds is not None:
        cpu_seconds.append(time.process_time() - c0)
    return time.perf_counter() - t0, res


class _Parts:
    """Wall seconds of DeepSpeed's optimizer methods (OPTIMIZER_PARTS), the device synchronised around each."""

    def __init__(self, engine, device):
        from deepspeed.runtime.zero import stage_1_and_2

        self.device, self.seconds, self._undo = device, Counter(), []
        owners = {"engine": engine, "optimizer": engine.optimizer, "stage_1_and_2": stage_1_and_2}
        for owner, name, label in OPTIMIZER_PARTS:
            obj = owners[owner]
            if hasattr(obj, name):
                self._wrap(obj, name, label, owner == "stage_1_and_2")

    def _wrap(self, obj, name, label, module_level):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(self.device)
                self.seconds[label] += time.perf_counter() - t0

        setattr(obj, name, timed)
        self._undo.append((obj, name, original if module_level else None))

    def remove(self):
        for obj, name, original in self._undo:
            if original is None:
                delattr(obj, name)  # the instance attribute goes; the class method shows again
            else:
                setattr(obj, name, original)


def _breakdown(engine, batches, grid, direction, cfg, device, monitor_factory) -> dict:
    """Seconds per patch step by phase over `batches` (see the module docstring)."""
    from pipeline.training.monitor import PhaseClock, patch_train_flops

    clock, parts = PhaseClock(device), _Parts(engine, device)
    steps, logging_s, logging_error = 0, 0.0, None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                monitor = monitor_factory(Path(tmp), int(engine.global_steps))
            except ImportError as e:  # tensorboard missing: the phases are still timed, logging is not
                monitor, logging_error = None, f"no monitor: {e}"
            for micro in batches:
                before = engine.global_steps
                seconds, res = _timed_batch(engine, micro, grid, direction, cfg, device, clock)
                steps += engine.global_steps - before
                t0 = time.perf_counter()
                record = {"step": int(engine.global_steps), "epoch": 0, "batch": 0, "direction": direction.name,
                          "patch_losses": res.patch_losses, "items": micro[0].codes.shape[0],
                          "tokens": res.num_predicted, "seconds": seconds}
                flops = micro[0].codes.shape[0] * sum(patch_train_flops(cfg, s) for s in res.context_tokens)
                if monitor is not None:
                    monitor.batch(record, res.patch_losses, res.step_lrs, res.step_grad_norms, flops, device)
                logging_s += time.perf_counter() - t0
            if monitor is not None:
                monitor.close()
    finally:
        parts.remove()
    patches = len(batches) * len(grid)
    phases = {k: v / patches for k, v in clock.phases.items()}
    if logging_error is None:
        phases["logging"] = logging_s / patches
    out = {"seconds_per_patch_step": phases, "total": sum(phases.values()), "optimizer_steps": steps,
           "optimizer_parts": {k: v / patches for k, v in sorted(parts.seconds.items())}}
    if logging_error:
        out["logging_error"] = logging_error
    step_parts = sum(v for k, v in out["optimizer_parts"].items() if not k.startswith("reduce"))
    out["step_other"] = phases.get("step", 0.0) - step_parts  # LR schedule, engine bookkeeping, copies
    return out


def _host_syncs(engine, batch, grid, direction, cfg, device) -> dict:
    """CUDA: every operation that made the host wait during one batch, counted by source line."""
    sites: Counter = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _timed_batch(engine, batch, grid, direction, cfg, device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            sites[f"{w.filename}:{w.lineno}"] += 1
    return {"total": sum(sites.values()), "patches": len(grid), "by_site": dict(sites.most_common(20))}


def _peak(device, resident_other: int) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)) - resident_other
    return _rss_bytes()


def measure(cfg, device, micro: int, grid, direction, args, bf16: bool, ds_extra: dict, peak) -> dict:
    """One micro-batch size: both engines, turns, breakdown (module docstring)."""
    from pipeline.training.monitor import TrainMonitor, patch_train_flops

    engines, peaks, resident = {}, {}, 0
    warm = _batches(cfg, device, micro, grid, args.warmup, 1)
    for region, gas in (("patch", 1), ("full", len(grid))):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            resident_before = torch.cuda.memory_allocated(device)
        engines[region], ds = _engine(cfg, micro, gas, bf16, ds_extra)
        for batch in warm:
            _timed_batch(engines[region], batch, grid, direction, cfg, device)
        peaks[region] = _peak(device, resident)
        if device.type == "cuda":
            resident = torch.cuda.memory_allocated(device) - resident_before
    timed = _batches(cfg, device, micro, grid, args.batches, 2)
    times: dict[str, list[float]] = {"patch": [], "full": []}
    cpu: dict[str, list[float]] = {"patch": [], "full": []}
    steps = {"patch": 0, "full": 0}
    contexts: list[int] = []
    for i, batch in enumerate(timed):
        order = ("patch", "full") if i % 2 == 0 else ("full", "patch")
        for region in order:
            before = engines[region].global_steps
            seconds, res = _timed_batch(engines[region], batch, grid, direction, cfg, device, cpu_seconds=cpu[region])
            times[region].append(seconds)
            steps[region] += engines[region].global_steps - before
            contexts = res.context_tokens
    tokens_per_batch = micro * len(grid) * cfg.tokens_per_patch
    flops_per_batch = micro * sum(patch_train_flops(cfg, s) for s in contexts)
    run: dict = {"micro_batch": micro, "ds_config": ds}
    for region in ("patch", "full"):
        med = statistics.median(times[region])
        run[region] = {"batch_seconds": times[region], "median_batch_seconds": med, "batch_cpu_seconds": cpu[region],
                       "optimizer_steps": steps[region],
                       "seconds_per_step": med * args.batches / max(1, steps[region]),
                       "tokens_per_s": tokens_per_batch / med, "samples_per_s": micro / med,
                       "model_tflops_per_s": flops_per_batch / med / 1e12,
                       "mfu": flops_per_batch / med / peak if peak else None, "peak_memory_bytes": peaks[region]}
    run["patch_vs_full_time_ratio"] = run["patch"]["median_batch_seconds"] / run["full"]["median_batch_seconds"]
    run["patch_vs_full_total_ratio"] = sum(times["patch"]) / sum(times["full"])
    # The fastest batch of each way: the least disturbed by other work on a shared machine.
    run["patch_vs_full_min_ratio"] = min(times["patch"]) / min(times["full"])
    if device.type == "cpu":  # this process's own CPU time: what other processes' load hardly changes
        run["patch_vs_full_cpu_time_ratio"] = statistics.median(cpu["patch"]) / statistics.median(cpu["full"])

    def monitor_factory(folder: Path, start: int):
        return TrainMonitor(True, folder / "tb", folder / "metrics.jsonl", 10**9, start, 10**9, peak, 1)

    if "breakdown" not in args.skip:
        extra = _batches(cfg, device, micro, grid, args.breakdown_batches, 4)
        run["breakdown"] = {region: _breakdown(engines[region], extra, grid, direction, cfg, device, monitor_factory)
                            for region in ("patch", "full")}
        b = run["breakdown"]
        run["breakdown"]["patch_minus_full"] = {
            k: b["patch"]["seconds_per_patch_step"].get(k, 0.0) - b["full"]["seconds_per_patch_step"].get(k, 0.0)
            for k in b["patch"]["seconds_per_patch_step"]}
        # The two ways do the same context, forward, backward and pool work; they differ in the optimizer step.
        # This ratio takes that difference inside the breakdown's own batches, so drift between batches (the
        # timed ratios' noise on a shared machine) does not enter it.
        extra = b["patch"]["seconds_per_patch_step"]["step"] - b["full"]["seconds_per_patch_step"]["step"]
        run["patch_vs_full_step_ratio"] = b["patch"]["total"] / (b["patch"]["total"] - extra)
    if device.type == "cuda" and "syncs" not in args.skip:
        run["host_syncs"] = _host_syncs(engines["patch"], timed[0], grid, direction, cfg, device)
    return run


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench train", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=None, help="model preset (default: tiny on CPU, base on CUDA)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config fields over the preset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--micro-batch", type=int, nargs="+", default=None,
                    help="one run each (default 8 on CPU, 4 on CUDA)")
    ap.add_argument("--grid", type=int, nargs=2, default=[4, 4], metavar=("H", "W"), help="patch grid")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per way")
    ap.add_argument("--warmup", type=int, default=1, help="untimed batches first")
    ap.add_argument("--breakdown-batches", type=int, default=1, help="batches of the phase breakdown per way")
    ap.add_argument("--zero-stage", type=int, default=2, choices=[1, 2, 3])
    ap.add_argument("--ds", nargs="*", default=[], metavar="KEY=VALUE",
                    help="DeepSpeed config entries (dotted keys, JSON values), e.g. bf16.check_grad_overflow=false")
    ap.add_argument("--widths", type=int, nargs="+", default=[1, 4, 16], help="width multiples for memory")
    ap.add_argument("--memory-grid", type=int, nargs=2, default=[2, 2], metavar=("H", "W"),
                    help="patch grid of the 1x image in the memory measurement")
    ap.add_argument("--skip", nargs="*", default=[], choices=["breakdown", "syncs", "memory"])
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--torch-adam", choices=["auto", "on", "off"], default="auto",
                    help="torch's Adam (auto: on; DeepSpeed's FusedAdam is JIT-built with nvcc at first use)")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)

    from model.config import preset
    from model.directions import Direction, Grid
    from model.pool import ContextPool
    from pipeline.training.monitor import peak_flops
    from pipeline.training.train import ensure_launcher_env

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if device.type == "cuda" else "cpu")
    ensure_launcher_env()
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    name = args.preset or ("base" if device.type == "cuda" else "tiny")
    overrides = {k: v for k, v in _dotted(args.set).items()}
    cfg = preset(name, **overrides)
    micros = args.micro_batch or [4 if device.type == "cuda" else 8]
    bf16 = device.type == "cuda" if args.bf16 == "auto" else args.bf16 == "on"
    torch_adam = args.torch_adam != "off"
    ds_extra = deep_merge({"zero_optimization": {"stage": args.zero_stage},
                           "optimizer": {"type": "Adam", "params": {"torch_adam": torch_adam}}}, _dotted(args.ds))
    direction = Direction.parse("down-right-forward")
    grid = Grid(*args.grid)
    peak, peak_src = peak_flops(device, bf16, args.peak_tflops)
    result: dict = {"preset": name, "model_overrides": overrides,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                    f"cpu ({torch.get_num_threads()} threads)", "bf16": bf16, "grid": list(args.grid),
                    "direction": direction.name, "zero_stage": args.zero_stage, "peak_flops": peak,
                    "peak_flops_source": peak_src, "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                    "parameters": sum(p.numel() for p in _count_model(cfg).parameters()), "runs": []}
    for micro in micros:
        run = measure(cfg, device, micro, grid, direction, args, bf16, ds_extra, peak)
        result["runs"].append(run)
        print(f"[bench train] {json.dumps({'preset': name, **run})}", file=sys.stderr, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if "memory" in args.skip:
        return result
    engine, _ = _engine(cfg, micros[0], 1, bf16, ds_extra)
    h0, w0 = args.memory_grid
    memory = []
    for k in args.widths:
        g = Grid(h0, w0 * k)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        secs, _ = _timed_batch(engine, _batches(cfg, device, micros[0], g, 1, 3 + k)[0], g, direction, cfg, device)
        pool = ContextPool(g, direction, cfg.expand)
        for coord in direction.schedule(g):  # the pool's occupancy for this grid (what training holds)
            pool.add(coord, [torch.empty(0)])
            pool.remove(coord)
        memory.append({"width_multiple": k, "grid": [g.H, g.W], "patches": len(g),
                       "peak_memory_bytes": _peak(device, 0), "pool_peak_patches": pool.peak,
                       "seconds_per_step": secs / len(g)})
    result["memory_vs_width"] = memory
    result["memory_growth_16x_over_1x"] = memory[-1]["peak_memory_bytes"] / memory[0]["peak_memory_bytes"]
    return result


def _count_model(cfg):
    """The renderer on the meta device: its parameter count without allocating it."""
    from model.renderer import Renderer

    with torch.device("meta"):
        return Renderer(cfg)

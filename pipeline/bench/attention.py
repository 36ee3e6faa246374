"""Context attention before and after the fused path (JSON): `python -m pipeline.bench attention`.

One renderer patch step (forward, backward, Adam; `model.bench.patch_step_seconds`) with a full window of
context (12 patches at e = (2, 2, 0)), in two ways:
- `masked`: the additive-mask formulation of before (`ContextSelfAttention.masked_reference`): a
  [queries x keys] mask per layer, [heads x queries x keys] with its gradient under Post-RPE;
- `fused`: `model.blocks.context_attention` (lower-right causal mask, Post-RPE bias folded into the keys).

Each way runs in a fresh process of its own, so that its peak memory is its own (CUDA: the allocator's
peak; CPU: the process's peak resident set, which includes the model and Adam, the same in both ways).
The ways take turns, round after round, and the medians are kept: a shared machine's speed drifts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys

import torch

WAYS = ("masked", "fused")


def worker(args) -> dict:
    """One way, in this process: the step's median seconds and the process's peak memory."""
    from model.bench import patch_step_seconds
    from model.blocks import ContextSelfAttention

    if args.threads:
        torch.set_num_threads(args.threads)
    ContextSelfAttention.masked_reference = args.worker == "masked"
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    res = patch_step_seconds(args.preset, args.device, args.batch, args.repeats, dtype, rpe=args.rpe)
    if args.device.startswith("cuda"):
        res["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    else:
        res["peak_memory_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench attention", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="items per patch step (default 1 on CPU, 8 on CUDA)")
    ap.add_argument("--rpe", nargs="+", default=["pre", "post"], choices=["pre", "post"])
    ap.add_argument("--rounds", type=int, default=2, help="turns of the two ways (medians kept)")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per process (after one warm-up step)")
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (default on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--worker", choices=WAYS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per process")
    args = ap.parse_args(argv)
    args.batch = args.batch or (8 if args.device.startswith("cuda") else 1)
    args.bf16 = args.bf16 or args.device.startswith("cuda")
    if args.worker:
        (args.rpe,) = args.rpe
        return worker(args)

    result: dict = {"preset": args.preset, "device": args.device, "batch": args.batch, "bf16": args.bf16,
                    "rounds": args.rounds, "torch": torch.__version__, "failed": []}
    for rpe in args.rpe:
        runs: dict[str, list[dict]] = {w: [] for w in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                cmd = [sys.executable, "-m", "pipeline.bench", "attention", "--worker", way, "--rpe", rpe,
                       "--preset", args.preset, "--device", args.device, "--batch", str(args.batch),
                       "--repeats", str(args.repeats)] + (["--bf16"] if args.bf16 else []) + \
                      (["--threads", str(args.threads)] if args.threads else [])
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ)
                except subprocess.TimeoutExpired:
                    result["failed"].append(f"{rpe}/{way}: over {args.timeout} s")
                    continue
                if done.returncode != 0:
                    result["failed"].append(f"{rpe}/{way}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
                    continue
                runs[way].append(json.loads(done.stdout))
        part = {}
        for way, rs in runs.items():
            if rs:
                part[way] = {"median_s_per_patch_step": statistics.median(r["median_s_per_patch_step"] for r in rs),
                             "peak_memory_bytes": statistics.median(r["peak_memory_bytes"] for r in rs),
                             "context_tokens": rs[0]["context_tokens"], "parameters": rs[0]["parameters"],
                             "runs": len(rs)}
        if len(part) == 2:
            part["fused_over_masked_time"] = (part["fused"]["median_s_per_patch_step"]
                                              / part["masked"]["median_s_per_patch_step"])
            part["memory_saved_bytes"] = part["masked"]["peak_memory_bytes"] - part["fused"]["peak_memory_bytes"]
        result[rpe] = part
        print(f"[bench attention] {json.dumps({rpe: part})}", file=sys.stderr, flush=True)
    if not result["failed"]:
        del result["failed"]
    return result

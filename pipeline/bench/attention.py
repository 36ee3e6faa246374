"""Context attention before and after the fused path (JSON): `python -m pipeline.bench attention`.

One renderer patch step (forward, backward, Adam; `model.bench.patch_step`) with a full window of context
(12 patches at e = (2, 2, 0)), in two ways:
- `masked`: the additive-mask formulation of before (`ContextSelfAttention.masked_reference`): a
  [1 x queries x keys] mask per layer, [heads x queries x keys] with its gradient under Post-RPE;
- `fused`: `model.blocks.context_attention` (lower-right causal mask, Post-RPE bias folded into the keys).

Per RPE, two measurements (each skippable):
- time: one process alternates the two ways step by step (after one warm-up step of each), `--rounds` times,
  and keeps each way's median: a shared machine's speed drifts, and both ways see the same drift;
- memory: each way in a fresh process of its own (a warm-up step and one more), so that its peak is its own
  (CUDA: the allocator's peak; CPU: the process's peak resident set, which includes the model and Adam, the
  same in both ways).
Each RPE's figures also go to stderr as one `[bench attention] {...}` line when done.
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


def _peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def worker(args) -> dict:
    """In this process: `both` alternates the ways for time; `masked` or `fused` runs one way for its memory."""
    from model.bench import patch_step
    from model.blocks import ContextSelfAttention
    from pipeline.bench.train import _dotted

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    step, info = patch_step(args.preset, args.device, args.batch, dtype, rpe=args.rpe[0], **_dotted(args.set))
    ways = WAYS if args.worker == "both" else (args.worker,)
    times: dict[str, list[float]] = {w: [] for w in ways}
    for i in range(1 + (args.rounds if args.worker == "both" else 1)):
        for way in ways if i % 2 == 0 else ways[::-1]:
            ContextSelfAttention.masked_reference = way == "masked"
            seconds = step()
            if i:  # the first round warms up kernels, the allocator and Adam's state
                times[way].append(seconds)
    return {**info, "seconds": times, "peak_memory_bytes": _peak_memory(args.device)}


def _spawn(args, way: str, rpe: str) -> dict:
    cmd = [sys.executable, "-m", "pipeline.bench", "attention", "--worker", way, "--rpe", rpe, "--preset",
           args.preset, "--device", args.device, "--batch", str(args.batch), "--rounds", str(args.rounds),
           "--set", *args.set] + (["--bf16"] if args.bf16 else []) + \
          (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=os.environ)
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-600:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench attention", description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config fields over the preset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="items per patch step (default 1 on CPU, 8 on CUDA)")
    ap.add_argument("--rpe", nargs="+", default=["pre", "post"], choices=["pre", "post"])
    ap.add_argument("--rounds", type=int, default=3, help="timed steps of each way (medians kept)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["time", "memory"])
    ap.add_argument("--bf16", action="store_true", help="autocast to bfloat16 (default on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--worker", choices=("both",) + WAYS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    args = ap.parse_args(argv)
    args.batch = args.batch or (8 if args.device.startswith("cuda") else 1)
    args.bf16 = args.bf16 or args.device.startswith("cuda")
    if args.worker:
        print(json.dumps(worker(args)))
        raise SystemExit(0)

    result: dict = {"preset": args.preset, "model_overrides": args.set, "device": args.device, "batch": args.batch,
                    "bf16": args.bf16, "rounds": args.rounds, "torch": torch.__version__, "failed": []}
    for rpe in args.rpe:
        part: dict = {}
        try:
            if "time" not in args.skip:
                both = _spawn(args, "both", rpe)
                part["context_tokens"], part["parameters"] = both["context_tokens"], both["parameters"]
                part["time"] = {w: {"seconds": both["seconds"][w], "median": statistics.median(both["seconds"][w])}
                                for w in WAYS}
                part["fused_over_masked_time"] = part["time"]["fused"]["median"] / part["time"]["masked"]["median"]
            if "memory" not in args.skip:
                peaks = {w: _spawn(args, w, rpe)["peak_memory_bytes"] for w in WAYS}
                part["peak_memory_bytes"] = peaks
                part["memory_saved_bytes"] = peaks["masked"] - peaks["fused"]
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            result["failed"].append(f"{rpe}: {e}")
        result[rpe] = part
        print(f"[bench attention] {json.dumps({rpe: part})}", file=sys.stderr, flush=True)
    if not result["failed"]:
        del result["failed"]
    return result

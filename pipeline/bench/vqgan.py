"""Benchmark: VQGAN encode / decode throughput and peak memory (random weights, no file needed).

    python -m pipeline.bench vqgan                       # f16/16384 at 256x256, CPU (+ CUDA if present)
    python -m pipeline.bench vqgan --device cuda --batch 16 --iters 10 --dtype bfloat16

Figures per device and arithmetic ("taming": every operation as taming computes it, the default of
model.vqgan; "fast": fused attention and SiLU): images/s for encode (pixels -> codes) and decode (codes
-> pixels), seconds per batch (medians of rounds taken in turns), how many codes the two choose
differently and how far their decoded pixels differ, and peak memory: the CUDA allocator's peak per
phase, or on the CPU the process's peak resident set size (which includes the model and the Python
runtime; it is a high-water mark of the process).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from model.vqgan import VQGAN, preset
from pipeline.bench.timing import sync


def _timed(fn, device: torch.device, iters: int) -> tuple[float, object]:
    out = fn()  # warm-up (kernel selection, allocator growth)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    sync(device)
    return (time.perf_counter() - t0) / iters, out


def bench_device(device: torch.device, args) -> dict:
    """Each arithmetic (model.vqgan.VQGAN.set_arithmetic) timed in turns, `rounds` times (medians kept: the
    machine's speed drifts), and how far the two disagree: codes chosen differently, decoded pixels."""
    torch.manual_seed(0)
    model = VQGAN(preset(args.preset)).to(device).eval()
    dtype = getattr(torch, args.dtype)
    x = torch.rand(args.batch, 3, args.size, args.size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    result = {"batch": args.batch, "size": args.size, "dtype": args.dtype, "iters": args.iters, "rounds": args.rounds}
    times = {m: {"encode": [], "decode": []} for m in args.arithmetic}
    codes, pixels = {}, {}
    with torch.inference_mode(), autocast:
        for _ in range(args.rounds):
            for mode in args.arithmetic:
                model.set_arithmetic(mode)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                enc_s, codes[mode] = _timed(lambda: model.encode(x), device, args.iters)
                if device.type == "cuda":
                    result[f"{mode}_encode_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                    torch.cuda.reset_peak_memory_stats(device)
                ref = codes[args.arithmetic[0]]  # every way decodes the same codes
                dec_s, pixels[mode] = _timed(lambda r=ref: model.decode_codes(r), device, args.iters)
                if device.type == "cuda":
                    result[f"{mode}_decode_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                times[mode]["encode"].append(enc_s)
                times[mode]["decode"].append(dec_s)
    for mode, t in times.items():
        enc_s, dec_s = statistics.median(t["encode"]), statistics.median(t["decode"])
        result[mode] = {"encode_images_per_s": args.batch / enc_s, "decode_images_per_s": args.batch / dec_s,
                        "encode_s_per_batch": enc_s, "decode_s_per_batch": dec_s,
                        "encode_rounds_s": t["encode"], "decode_rounds_s": t["decode"]}
    if len(args.arithmetic) == 2:
        a, b = args.arithmetic
        result["disagreement"] = {
            "codes_total": codes[a].numel(), "codes_different": int((codes[a] != codes[b]).sum()),
            "decode_max_abs_difference": float((pixels[a].float() - pixels[b].float()).abs().max())}
    result["codes_shape"] = list(codes[args.arithmetic[0]].shape)
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    else:
        result["threads"] = torch.get_num_threads()
        result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench vqgan", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="f16_16384")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the CPU, and CUDA as well when available")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--arithmetic", nargs="+", choices=["taming", "fast"], default=["taming", "fast"],
                   help="the encoder/decoder arithmetic(s) to time (model.vqgan.VQGAN.set_arithmetic)")
    p.add_argument("--rounds", type=int, default=3, help="each arithmetic is timed this many times, in turns")
    args = p.parse_args(argv)
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device available")
        devices.append(torch.device("cuda", 0))
    cfg = preset(args.preset)
    params = sum(p.numel() for p in VQGAN(cfg).parameters())
    return {"benchmark": "vqgan", "preset": args.preset, "parameters": params, "downsample": cfg.downsample,
            "n_embed": cfg.n_embed, "torch": torch.__version__,
            "results": {d.type: bench_device(d, args) for d in devices}}

"""Benchmark: images/s through the FID Inception-v3 feature extractor (random weights).

`python -m pipeline.bench metrics [--batch 16] [--size 299] [--iters 5] [--devices cpu,cuda]`

Measures the pytorch-fid variant (the FID-specific blocks) built with random weights: the
speed does not depend on the weight values. Inputs are uint8 blocks of 256x256 resized to
--size inside the extractor, exactly as Block-FID feeds them. Devices that are not present
are reported as skipped. Also times one Fréchet distance at 2048-d with each method.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def _time_device(device: torch.device, batch: int, size: int, iters: int, block: int) -> dict:
    from pipeline.evaluation.metrics.inception import InceptionFeatures, build_inception3

    torch.manual_seed(0)
    model = InceptionFeatures(build_inception3(1008, aux_logits=False, fid_blocks=True), "pytorch-fid",
                              input_size=size).to(device)
    images = np.random.default_rng(0).integers(0, 256, (batch, block, block, 3), dtype=np.uint8)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.extract(images, device)  # warm-up: kernel selection, allocator
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        model.extract(images, device)
        sync()
        times.append(time.perf_counter() - t0)
    best, median = min(times), float(np.median(times))
    out = {"batch": batch, "input_size": size, "block": block, "iters": iters,
           "images_per_s_median": round(batch / median, 2), "images_per_s_best": round(batch / best, 2),
           "seconds_per_batch_median": round(median, 4)}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["peak_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:
        out["torch_threads"] = torch.get_num_threads()
    return out


def _time_frechet(dim: int, samples: int) -> dict:
    from pipeline.evaluation.metrics.fid import frechet_distance

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(samples, dim)), rng.normal(size=(samples, dim)) + 0.1
    stats = [(x.mean(0), np.cov(x, rowvar=False)) for x in (a, b)]
    out = {"dim": dim, "samples": samples}
    for method in ("eigen", "sqrtm"):
        t0 = time.perf_counter()
        value = frechet_distance(*stats[0], *stats[1], method=method)
        out[f"{method}_seconds"] = round(time.perf_counter() - t0, 3)
        out[f"{method}_value"] = value
    return out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(prog="python -m pipeline.bench metrics", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=299, help="Inception input side (299 as in FID)")
    p.add_argument("--block", type=int, default=256, help="side of the uint8 inputs (a Block-FID block)")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--frechet-dim", type=int, default=2048, help="0 skips the Fréchet distance timing")
    p.add_argument("--frechet-samples", type=int, default=4096)
    args = p.parse_args(argv)
    result: dict = {"benchmark": "metrics", "torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "devices": {}}
    for name in [d.strip() for d in args.devices.split(",") if d.strip()]:
        if name.startswith("cuda") and not torch.cuda.is_available():
            result["devices"][name] = {"skipped": "CUDA is not available"}
            continue
        result["devices"][name] = _time_device(torch.device(name), args.batch, args.size, args.iters, args.block)
    if args.frechet_dim:
        result["frechet_distance"] = _time_frechet(args.frechet_dim, args.frechet_samples)
    return result

"""Video curation throughput: clips/s through cutting (CPU) and Mask R-CNN frames/s (CUDA when present).

    python -m pipeline.bench video [--videos 2] [--width 1920 --height 1080 --seconds 4 --src-fps 30]
                                   [--size 1024 --frames 5 --fps 5] [--detector-frames 16 --batch 4]
                                   [--weights FILE] [--device auto] [--skip cutting|detector]

Cutting: synthetic H.264 sources (textured, moving; made first, not timed) go through
`pipeline.formats.video_io.probe` + `cut_clips` in this one process, as one ingest worker does (the stage
runs `workers` of them). Detector: torchvision maskrcnn_resnet50_fpn at its default 800/1333
resize on size x size frames; random weights unless --weights names a state dict. With random
weights nearly every proposal clears the 0.05 floor, so each frame carries the 100-detection
maximum through the mask head: a worst case (`detections_per_frame` is reported beside the rate;
real COCO weights on landscapes give far fewer).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np


def _make_source(path: Path, width: int, height: int, seconds: float, fps: int, seed: int) -> None:
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    base = np.kron(base, np.ones((16, 16, 1), np.uint8))
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "20"}
        for i in range(int(seconds * fps)):
            dx = (2 * i) % 16
            frame = np.ascontiguousarray(base[dx // 2: dx // 2 + height, dx: dx + width])
            for pk in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)


def bench_cutting(args) -> dict:
    from pipeline.formats.video_io import cut_clips, probe

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = []
        for i in range(args.videos):
            p = tmp / f"src{i}.mp4"
            _make_source(p, args.width, args.height, args.seconds, args.src_fps, seed=i)
            sources.append(p)
        t0 = time.perf_counter()
        n_clips = 0
        for i, p in enumerate(sources):
            info = probe(p)
            clips = cut_clips(p, info, fps=args.fps, frames=args.frames, size=args.size, crop="center", seed=0,
                              clip_id=lambda k, i=i: f"v{i}-{k:04d}", clip_dir=tmp / "clips")
            n_clips += len(clips)
        dt = time.perf_counter() - t0
    return {"videos": args.videos, "source": f"{args.width}x{args.height} @ {args.src_fps} fps, {args.seconds} s",
            "clip": f"{args.size}x{args.size}x{args.frames} @ {args.fps} fps", "clips": n_clips,
            "seconds": round(dt, 3), "clips_per_s": round(n_clips / dt, 3),
            "source_seconds_per_s": round(args.videos * args.seconds / dt, 3)}


def bench_detector(args) -> dict:
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from pipeline.curation.detectors import load_state_dict
    from pipeline.ranks import pick_device

    device = pick_device(args.device)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  box_score_thresh=args.score_floor)
    if args.weights:
        model.load_state_dict(load_state_dict(Path(args.weights)))
    model = model.eval().to(device)
    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.integers(0, 255, (3, args.size, args.size), dtype=np.uint8)).float().div(255)
              for _ in range(args.batch)]
    frames = [f.to(device) for f in frames]
    detections = 0
    with torch.inference_mode():
        model(frames)  # warm-up (cuDNN autotuning, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        n, t0 = 0, time.perf_counter()
        while n < args.detector_frames:
            out = model(frames)
            detections += sum(len(o["scores"]) for o in out)
            n += len(frames)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    return {"device": name, "torch": torch.__version__, "frames": n, "batch": args.batch,
            "frame": f"{args.size}x{args.size} resized to 800", "weights": args.weights or "random",
            "score_floor": args.score_floor, "detections_per_frame": round(detections / n, 2),
            "seconds": round(dt, 3), "frames_per_s": round(n / dt, 3)}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="python -m pipeline.bench video")
    ap.add_argument("--videos", type=int, default=2)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--src-fps", type=int, default=30)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--detector-frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--score-floor", type=float, default=0.05)
    ap.add_argument("--weights", default=None, help="a Mask R-CNN state dict (default: random weights)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip", choices=["cutting", "detector"], action="append", default=[])
    args = ap.parse_args(argv)
    result = {}
    if "cutting" not in args.skip:
        result["cutting"] = bench_cutting(args)
    if "detector" not in args.skip:
        result["detector"] = bench_detector(args)
    return result

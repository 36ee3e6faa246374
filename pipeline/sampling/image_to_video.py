"""Image-to-video (paper Fig. 5, Table 2): from one first frame, predict the frames that follow.

The first frame is encoded with the VQGAN into frame 0 of a code grid of 1 + `frames` frames.
Its patches are run teacher-forced to prime the pool, then every later patch is drawn in
Right-Down-Forward order (raster inside a frame, frames slowest), so each new frame sees the
previous frames through the pool's temporal window (e_f, (1, 1, 3) in the paper's video set-up).
Frames are decoded one at a time as soon as their last patch is drawn, into a disk-backed
canvas, and the clip is written as H.264 MP4 (`pipeline.formats.video_io.write_mp4`).

Choices the paper leaves open: `frames` counts the predicted frames, so the clip has 1 + frames
frames and its first frame is the VQGAN reconstruction of the given one (the given frame's codes
are kept unchanged); a model whose patches span several frames (f_p > 1) cannot start from a
single frame and is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.config import SamplingConfig
from model.directions import Direction, Grid
from model.renderer import Renderer
from pipeline.formats.video_io import write_mp4
from pipeline.sampling.generate import CodeFileWriter, GenerationStats, GivenCodes, MemoryLedger, Tee, generate
from pipeline.sampling.stream_decode import Canvases, VideoStreamDecoder, from_uint8

VIDEO_DIRECTION = "right-down-forward"


def encode_frame(vqgan, frame: np.ndarray, patch: tuple[int, int, int], where: str = "first frame") -> torch.Tensor:
    """uint8 RGB [H, W, 3] -> codes [1, 1, h, w]; the frame must be whole patches."""
    f = vqgan.downsample
    hp, wp, fp = patch
    h_px, w_px = frame.shape[:2]
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{where}: expected uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}")
    if h_px % (hp * f) or w_px % (wp * f):
        raise ValueError(f"{where}: {h_px} x {w_px} pixels is not whole patches of {hp * f} x {wp * f} pixels "
                         f"(patch {hp} x {wp} codes, VQGAN factor {f}); crop or resize it")
    device = next(vqgan.parameters()).device
    with torch.inference_mode():
        codes = vqgan.encode(from_uint8(frame).to(device))
    return codes[:, None]


def image_to_video(renderer: Renderer, vqgan, frame: np.ndarray, frames: int, out_path: str | Path, fps: float, *,
                   text_ids: torch.Tensor | None = None, text_mask: torch.Tensor | None = None,
                   sampling: SamplingConfig | None = None, generator: torch.Generator | None = None,
                   codes_path: str | Path | None = None, progress: bool = False,
                   ledger: MemoryLedger | None = None) -> GenerationStats:
    """Predict `frames` frames after `frame` (uint8 [H, W, 3]) and write the clip to `out_path` (MP4)."""
    cfg = renderer.cfg
    hp, wp, fp = cfg.patch
    if fp != 1:
        raise ValueError(f"image-to-video starts from one frame; this model's patches span f_p = {fp} frames")
    if frames < 1:
        raise ValueError(f"frames (the number of frames to predict) must be >= 1, got {frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    first = encode_frame(vqgan, frame, cfg.patch)
    h, w = first.shape[-2:]
    grid = Grid(h // hp, w // wp, 1 + frames)
    f = vqgan.downsample
    out_path = Path(out_path)
    ledger = ledger if ledger is not None else MemoryLedger()
    with Canvases(out_path.parent, [(1 + frames, h * f, w * f, 3)]) as canvases:
        decoder = VideoStreamDecoder(vqgan, canvases.arrays, ledger)
        consumers = [decoder]
        writer = None
        if codes_path is not None:
            writer = CodeFileWriter([Path(codes_path)], (1 + frames, h, w), cfg.vocab_size)
            consumers.append(writer)
        stats = generate(renderer, grid, Direction.parse(VIDEO_DIRECTION), Tee(*consumers), text_ids=text_ids,
                         text_mask=text_mask, batch=1, sampling=sampling, generator=generator,
                         given=GivenCodes(first, (0, 0, 0)), ledger=ledger, progress=progress,
                         desc=f"{out_path.name} patches")
        decoder.finish()
        if writer is not None:
            writer.finish()
        write_mp4(out_path, canvases.arrays[0], fps)
    return stats

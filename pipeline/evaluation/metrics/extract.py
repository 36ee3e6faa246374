"""Streaming feature extraction: images -> blocks -> Inception, videos -> clips -> I3D.

Everything is streamed: an image is read, cut into block views, and the views are stacked into
fixed-size batches; features go straight into running float64 statistics. Memory therefore does
not grow with the number or the width of the images. Inputs of different sizes are never
resized to fit one batch: a batch is flushed when the shape changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.evaluation.metrics.blocks import iter_blocks
from pipeline.evaluation.metrics.fid import RunningStats
from pipeline.evaluation.metrics.media import read_all


def batches_of_equal_shape(arrays: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack consecutive arrays into batches of at most `batch_size`, never mixing shapes."""
    buf: list[np.ndarray] = []
    for a in arrays:
        if buf and (len(buf) == batch_size or a.shape != buf[0].shape):
            yield np.stack(buf)
            buf = []
        buf.append(a)
    if buf:
        yield np.stack(buf)


def _blocks_of(items, block: int, stride: int, bad: list[dict], counts: dict, desc: str):
    for item, image in tqdm(read_all(items, bad), total=len(items), desc=desc, unit="img", leave=False):
        if image.shape[0] < block or image.shape[1] < block:
            bad.append({"path": str(item.path),
                        "reason": f"{image.shape[1]}x{image.shape[0]} image is smaller than a {block}px block"})
            continue
        counts["images"] += 1
        for view in iter_blocks(image, block, stride):
            counts["blocks"] += 1
            yield view


def inception_block_stats(model, items, block: int, stride: int, batch_size: int, device,
                          bad: list[dict], keep_logits: bool = False, desc: str = "blocks"):
    """(RunningStats of the blocks' pool features, logits [n, k] float32 or None, counts)."""
    stats = RunningStats(2048)
    logits = [] if keep_logits else None
    counts = {"images": 0, "blocks": 0}
    for batch in batches_of_equal_shape(_blocks_of(items, block, stride, bad, counts, desc), batch_size):
        feats, lg = model.extract(batch, device)
        stats.update(feats)
        if logits is not None:
            logits.append(lg.astype(np.float32))
    if logits is not None:
        logits = np.concatenate(logits) if logits else np.zeros((0, model.num_classes), np.float32)
    return stats, logits, counts


def inception_image_logits(model, items, batch_size: int, device, bad: list[dict], desc: str = "images"):
    """Logits [n, k] (float64) of whole images, each resized to the network's input size."""
    out = []
    images = (img for _, img in tqdm(read_all(items, bad), total=len(items), desc=desc, unit="img", leave=False))
    for batch in batches_of_equal_shape(images, batch_size):
        out.append(model.extract(batch, device)[1])
    return np.concatenate(out) if out else np.zeros((0, model.num_classes))


def prepare_clip(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [3, T, size, size] in [-1, 1] (bilinear, antialiased when shrinking)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-2:] != (size, size):
        shrinking = x.shape[-2] > size or x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)
    return (2.0 * x - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


@torch.no_grad()
def i3d_stats(model, items, frames: int, size: int, batch_size: int, device, bad: list[dict],
              desc: str = "clips") -> RunningStats:
    """RunningStats of I3D's time-averaged logits over the first `frames` frames of each video.

    A video with fewer than `frames` frames goes to `bad` with the reason: a Fréchet distance
    between clips of different lengths would measure the lengths, not the videos."""
    stats = RunningStats(model.num_classes)

    def long_enough():
        for item, video in tqdm(read_all(items, bad, max_frames=frames), total=len(items), desc=desc, unit="clip",
                                leave=False):
            if len(video) < frames:
                bad.append({"path": str(item.path), "reason": f"{len(video)} frames, FVD here needs {frames}"})
                continue
            yield video

    clips = (prepare_clip(v, size).numpy() for v in long_enough())
    for batch in batches_of_equal_shape(clips, batch_size):
        feats = model(torch.from_numpy(batch).to(device))
        stats.update(feats.double().cpu().numpy())
    return stats

"""Turn VQGAN codes back into pixels to look at: a PNG for an image, an MP4 for a clip.

    python -m pipeline.tokens.decode --config run.yaml --tokens runs/demo/tokens/images/test --id img-01.. --out a.png
    python -m pipeline.tokens.decode --config run.yaml --tokens runs/demo/tokens/videos/train --index 0 --out c.mp4
    python -m pipeline.tokens.decode --config run.yaml --codes grid.npy --out x.png

`--codes` takes any .npy grid of shape [h, w], [f, h, w] or [1, f, h, w]. One frame gives a PNG;
several give an MP4 at --fps (the paper's clips are 5 fps). The VQGAN is the config's (section `vqgan`);
when a token set was made with another VQGAN file (sha256 in its meta.json) the decode is refused,
since codes of one codebook mean nothing in another, unless --any-vqgan is given.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline import atomic
from pipeline.config import load_config
from pipeline.errors import entry_point
from pipeline.formats import shards, vqgan_io

log = logging.getLogger("decode")


def codes_to_frames(model, codes: np.ndarray, device: str | torch.device = "cpu") -> np.ndarray:
    """Codes [f, h, w] -> uint8 frames [f, h*factor, w*factor, 3]."""
    with torch.inference_mode():
        x = model.decode_codes(torch.as_tensor(np.asarray(codes), dtype=torch.long, device=device))
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def write_frames(frames: np.ndarray, out: Path, fps: float) -> None:
    from PIL import Image

    if out.suffix.lower() == ".png":
        if frames.shape[0] != 1:
            raise SystemExit(f"{out}: {frames.shape[0]} frames cannot go into a PNG; use an .mp4 name")
        with atomic.atomic_path(out) as tmp:
            Image.fromarray(frames[0]).save(tmp, format="PNG")
    elif out.suffix.lower() == ".mp4":
        from pipeline.formats.video_io import write_mp4

        write_mp4(out, frames, fps)
    else:
        raise SystemExit(f"{out}: the output name must end in .png or .mp4")


def load_grid(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: not a .npy array ({e})") from e
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.integer):
        raise SystemExit(f"{path}: expected integer codes [h, w], [f, h, w] or [1, f, h, w]; got {arr.dtype} "
                         f"{arr.shape}")
    return arr


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", type=Path, help="a token-set folder (pipeline.formats.shards)")
    src.add_argument("--codes", type=Path, help="a .npy code grid")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--id", help="item id in the token set")
    which.add_argument("--index", type=int, help="item position in the token set's index")
    p.add_argument("--out", type=Path, required=True, help="output .png (one frame) or .mp4")
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--any-vqgan", action="store_true", help="decode even if the token set names another VQGAN")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    model, sha, path = vqgan_io.load_vqgan(cfg, "cpu")

    if args.tokens is not None:
        ts = shards.TokenSet(args.tokens)
        if ts.meta.vqgan_sha256 != sha and not args.any_vqgan:
            raise SystemExit(f"{args.tokens}: made with VQGAN sha256 {ts.meta.vqgan_sha256[:12]}, the config's "
                             f"{path} is {sha[:12]}; pass --any-vqgan to decode anyway")
        if args.id is not None:
            if args.id not in ts.ids:
                raise SystemExit(f"{args.tokens}: no item with id {args.id!r} ({len(ts)} items)")
            i = ts.ids.index(args.id)
        else:
            i = args.index or 0
            if not 0 <= i < len(ts):
                raise SystemExit(f"{args.tokens}: index {i} outside [0, {len(ts)})")
        codes, caption, item = ts[i]
        log.info("decoding %s (caption %r)", item, caption)
    else:
        if args.id is not None or args.index is not None:
            raise SystemExit("--id / --index go with --tokens")
        codes = load_grid(args.codes)
    n = model.config.n_embed
    if codes.min() < 0 or codes.max() >= n:
        raise SystemExit(f"codes outside this VQGAN's codebook [0, {n})")
    frames = codes_to_frames(model, codes)
    write_frames(frames, args.out, args.fps)
    log.info("decode: wrote %s (%d frame(s) of %dx%d)", args.out, frames.shape[0], frames.shape[2], frames.shape[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

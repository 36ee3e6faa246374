"""Validation loss and bits per token of a renderer on a held-out token set (teacher forcing).

    python -m pipeline.training.validate --config run.yaml [--data DIR] [--direction down-right-forward]
                                [--batch-size 8] [--max-items N] [--out FILE.json]

The same patch loop as training without the optimizer: for each batch, walk the patches in the
given direction, feed every patch its true tokens and the context pool built from the true tokens
of the patches before it (teacher forcing), and accumulate the cross-entropy of the predicted
tokens. bits per token = mean cross-entropy / ln 2, averaged over every predicted token (for P-NAR,
over the masked tokens of a seeded mask draw, so it is comparable only between P-NAR runs).
Captions are used as given (no dropping) unless `drop_captions` is set (every caption replaced by
the dropped caption of classifier-free training: the unconditional bits); a model without text gets
none. `select` (a predicate on patch coordinates) restricts the totals to some patches (the extended
half of an extension, the predicted frames of a video); every patch still runs, teacher-forced, so
the selected ones see the same context as in the full pass.

The evaluation stage calls `validation_bits_per_token(renderer, tokenset, direction, batch_size,
tokenizer)` directly, on `held_out_set(run config, ...)`: the test token set, or for a single-image run
(`train.windows` set) the windows that tile the canvases' held-out strips (pipeline.training.data), of
the training windows' size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.directions import Direction
from model.patches import get_patch, patch_grid
from model.pool import ContextPool
from model.renderer import Renderer
from pipeline.config import RunConfig
from pipeline.errors import entry_point
from pipeline.formats.canvas import CanvasSet, is_canvas_set
from pipeline.formats.shards import TokenSet
from pipeline.formats.text_tokenizer import TextTokenizer
from pipeline.training.data import DataError, WindowSet, holdout_windows, window_codes
from pipeline.training.settings import read_train_section

log = logging.getLogger("validate")


@torch.no_grad()
def validation_bits_per_token(renderer: Renderer, tokenset: TokenSet, direction: Direction | str, batch_size: int,
                              tokenizer: TextTokenizer | None, max_items: int | None = None, seed: int = 0,
                              progress: bool = False, drop_captions: bool = False,
                              select: Callable[[tuple[int, int, int]], bool] | None = None) -> dict:
    """Teacher-forced cross-entropy of `renderer` on `tokenset` in `direction`; returns a summary dict."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = renderer.cfg
    direction = Direction.parse(direction)
    grid = patch_grid(tuple(tokenset.meta.grid), cfg.patch)
    if tokenset.meta.vocab_size > cfg.vocab_size:
        raise ValueError(f"{tokenset.folder}: token set has {tokenset.meta.vocab_size} codes, the model "
                         f"{cfg.vocab_size}")
    if cfg.has_text and tokenizer is None:
        raise ValueError("the model has a text encoder: pass its tokenizer")
    device = next(renderer.parameters()).device
    was_training = renderer.training
    renderer.eval()
    n = len(tokenset) if max_items is None else min(max_items, len(tokenset))
    generator = torch.Generator().manual_seed(seed)  # P-NAR masks
    total_nats, total_tokens = 0.0, 0
    per_patch = np.zeros(len(grid))
    per_patch_tokens = np.zeros(len(grid))
    schedule = direction.schedule(grid)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="validation", unit="batch", disable=not progress):
        idx = range(start, min(n, start + batch_size))
        codes = torch.from_numpy(np.stack([tokenset.codes(i) for i in idx])).to(device)
        text_ids = text_mask = None
        if cfg.has_text:
            text_ids, text_mask = tokenizer.encode([tokenset.captions[i] for i in idx], cfg.text_len)
            if drop_captions:  # what training feeds for a dropped caption: all padding, nothing visible
                text_ids, text_mask = torch.zeros_like(text_ids), torch.zeros_like(text_mask)
            text_ids, text_mask = text_ids.to(device), text_mask.to(device)
        pool = ContextPool(grid, direction, cfg.expand)
        for p, coord in enumerate(schedule):
            out = renderer(get_patch(codes, coord, cfg.patch), pool.context(coord, device), text_ids, text_mask,
                           generator=generator, direction=direction)
            n_pred = int(out.num_predicted)
            nats = float(out.loss) * n_pred
            if select is None or select(coord):
                total_nats += nats
                total_tokens += n_pred
            per_patch[p] += nats
            per_patch_tokens[p] += n_pred
            pool.add(coord, out.states)
            pool.remove(coord)
    renderer.train(was_training)
    if total_tokens == 0:
        raise ValueError(f"{tokenset.folder}: no items to validate on" + (" (or no patch selected)" if select else ""))
    loss = total_nats / total_tokens
    if not math.isfinite(loss):
        raise ValueError(f"non-finite validation loss {loss}")
    return {"loss_nats": loss, "bits_per_token": loss / math.log(2), "tokens": int(total_tokens), "items": n,
            "direction": direction.name, "renderer": cfg.renderer, "captions": "dropped" if drop_captions else "own",
            "bits_per_token_by_patch": (per_patch / np.maximum(per_patch_tokens, 1) / math.log(2)).tolist()}


__all__ = ["DataError", "held_out_set", "validation_bits_per_token"]


def held_out_set(run: RunConfig, cfg, folder: Path | None = None) -> TokenSet | WindowSet:
    """The run's held-out data for a model of RenderConfig `cfg`: `folder` (default: the run's canvases when
    `train.windows` is set, else run_dir/tokens/images/test), a token set or a canvas set's held-out windows."""
    windows = read_train_section(run).windows
    if folder is None:
        folder = run.run_dir / "tokens" / ("single_image" if windows is not None else "images/test")
    if not is_canvas_set(folder):
        return TokenSet(folder)
    size = window_codes(windows, cfg) if windows is not None and windows.size is not None else None
    return holdout_windows(CanvasSet(folder), size, cfg.patch)


def held_out_arguments(ap: argparse.ArgumentParser, batch_size: int) -> None:
    """The options of a teacher-forced held-out pass (here and in pipeline.training.curve)."""
    ap.add_argument("--direction", default="down-right-forward")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


@entry_point(user_errors=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    from pipeline import atomic
    from pipeline.config import load_config
    from pipeline.formats.renderer_io import export_dir, load_renderer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--export", default=None, help="export folder (default run_dir/train/export)")
    ap.add_argument("--data", default=None, help="token set or canvas set (default: the run's held-out data)")
    held_out_arguments(ap, batch_size=8)
    ap.add_argument("--max-items", type=int, default=None)
    ap.add_argument("--out", default=None, help="write the result JSON here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    renderer, tokenizer = load_renderer(cfg.resolve(args.export) if args.export else export_dir(cfg), args.device)
    tokenset = held_out_set(cfg, renderer.cfg, cfg.resolve(args.data) if args.data else None)
    data = tokenset.folder
    result = validation_bits_per_token(renderer, tokenset, args.direction, args.batch_size, tokenizer,
                                       args.max_items, seed=cfg.seed, progress=True)
    result["token_set"] = str(data)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic.write_text(cfg.resolve(args.out), text + "\n")
    log.info("validation on %s (%d items, %s): %.4f bits per token", data, result["items"], result["direction"],
             result["bits_per_token"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

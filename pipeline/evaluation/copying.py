"""How much of a sample is a verbatim copy of the single image its model was trained on.

    python -m pipeline.evaluation.copying --config run.yaml [--sample NAME ...] [--out FILE.json]

A model trained on one image can simply memorise it, so a single-image run reports how much of its
output repeats the source exactly. Everything is measured on codes: the sampler's `<name>.codes.npy`
(`sample.save_codes: true`) against the run's code canvases (pipeline.formats.canvas), so "equal"
means equal VQGAN codes, the exact unit the model generates. Only the generated patches count: the
given part of an extension (its sidecar's `side` and `given_size`) is left out.

- copy_share: the share of generated patches (h_p x w_p codes on the output's patch grid)
  whose codes equal those of some h_p x w_p block of a source's training box, at any code offset.
  `nonflat_copy_share` is the same over the patches that hold more than one distinct code (a patch
  of plain sky is "a copy" of every other one); `near_copy_share` counts the patches that equal some
  block in at least 75% of their codes (a copy up to a few codes).
- The baseline: the same shares for the patches of the source's held-out strip (real pixels the
  model never trained on). That is how often the image repeats itself exactly at this scale; a
  sample whose shares are near it copies patches no more than the image itself does.
- longest_copy_px: the longest run of consecutive generated patch columns (each the whole height of
  the output) that equals a run of consecutive columns of a training box at some code offset, in
  pixels (and the held-out strip's, as its baseline). Computed when the output is as high as the
  training box (a continuation to the left or right, or a new image of the source's height).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from pipeline import atomic
from pipeline.formats.canvas import CanvasSet

log = logging.getLogger("copying")
NEAR = 0.75  # a "near copy" equals a source block in at least this share of its codes


def _blocks(codes: np.ndarray, bh: int, bw: int, step: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Every bh x bw block of codes [h, w] (at the given steps) as rows of a [n, bh*bw] int64 array."""
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(codes, dtype=np.int64), (bh, bw))
    view = view[::step[0], ::step[1]]
    return view.reshape(-1, bh * bw)


def _keys(rows: np.ndarray) -> list[bytes]:
    rows = np.ascontiguousarray(rows)
    return [r.tobytes() for r in rows]


def best_overlap(patches: np.ndarray, blocks: np.ndarray, chunk: int = 256) -> np.ndarray:
    """For each patch ([n, T] codes), the largest number of positions where it equals one of `blocks` [m, T]."""
    out = np.zeros(len(patches), dtype=np.int64)
    for i in range(0, len(patches), chunk):
        part = patches[i:i + chunk]
        out[i:i + chunk] = (part[:, None, :] == blocks[None, :, :]).sum(axis=2).max(axis=1)
    return out


def patch_shares(patches: np.ndarray, source: np.ndarray, near: float = NEAR) -> dict:
    """Shares of `patches` ([n, T] codes) equal to a block of `source` ([m, T], distinct rows), over all and over
    the non-flat ones, and the share that equals one in at least `near` of their positions."""
    if not len(patches):
        return {"patches": 0, "copy_share": None, "nonflat_patches": 0, "nonflat_copy_share": None,
                "near_copy_share": None}
    overlap = best_overlap(patches, source)
    found = overlap == patches.shape[1]
    nonflat = (patches != patches[:, :1]).any(axis=1)
    return {"patches": int(len(patches)), "copy_share": float(found.mean()), "nonflat_patches": int(nonflat.sum()),
            "nonflat_copy_share": float(found[nonflat].mean()) if nonflat.any() else None,
            "near_copy_share": float((overlap >= near * patches.shape[1]).mean())}


def longest_column_copy(region: np.ndarray, sources: list[np.ndarray], wp: int) -> int:
    """The longest run (in codes) of consecutive wp-wide columns of `region` [h, w] equal to consecutive
    columns of one of `sources` (each [h, w_s]) at some code offset."""
    h, w = region.shape
    best = 0
    for src in sources:
        if src.shape[0] != h or src.shape[1] < wp:
            continue
        index: dict[bytes, list[int]] = {}
        for x, key in enumerate(_keys(_blocks(src, h, wp))):
            index.setdefault(key, []).append(x)
        run: dict[int, int] = {}  # source offset of the current column -> run length ending here
        for j in range(0, w - wp + 1, wp):
            key = np.ascontiguousarray(region[:, j:j + wp], dtype=np.int64).tobytes()
            run = {x: run.get(x - wp, 0) + 1 for x in index.get(key, [])}
            best = max(best, max(run.values(), default=0))
    return best * wp


def generated_mask(shape: tuple[int, int], sidecar: dict, factor: int) -> np.ndarray:
    """True on the codes a sample generated (False on an extension's given codes)."""
    mask = np.ones(shape, dtype=bool)
    if sidecar.get("mode") != "extend":
        return mask
    gh, gw = (v // factor for v in sidecar["given_size"])
    side = sidecar["side"]
    if side == "right":
        mask[:gh, :gw] = False
    elif side == "left":
        mask[:gh, shape[1] - gw:] = False
    elif side == "down":
        mask[:gh, :gw] = False
    else:
        mask[shape[0] - gh:, :gw] = False
    return mask


def analyse(codes: np.ndarray, sidecar: dict, cset: CanvasSet, patch: tuple[int, int]) -> dict:
    """The copy figures of one sample's codes [1, h, w] (or [h, w]) against the canvases' training boxes."""
    hp, wp = patch
    f = cset.meta.downsample
    codes = np.asarray(codes)[0] if np.ndim(codes) == 3 else np.asarray(codes)
    trains, holdouts = [], []
    for c in cset.canvases:
        arr = np.asarray(c.codes()[0])
        x0, y0, x1, y1 = c.train_box
        trains.append(arr[y0:y1, x0:x1])
        if c.holdout_box is not None:
            x0, y0, x1, y1 = c.holdout_box
            holdouts.append(arr[y0:y1, x0:x1])
    source = np.unique(np.concatenate([_blocks(t, hp, wp) for t in trains if t.shape[0] >= hp and t.shape[1] >= wp]),
                       axis=0)
    mask = generated_mask(codes.shape, sidecar, f)
    patch_mask = _blocks(mask, hp, wp, (hp, wp)).all(axis=1)
    out = {"patch": [hp, wp], "source_blocks": len(source),
           "generated": patch_shares(_blocks(codes, hp, wp, (hp, wp))[patch_mask], source)}
    held = [_blocks(t, hp, wp, (hp, wp)) for t in holdouts if t.shape[0] >= hp and t.shape[1] >= wp]
    out["holdout_baseline"] = patch_shares(np.concatenate(held), source) if held else None
    # Column runs: the generated columns of an output as high as the training boxes.
    cols = np.flatnonzero(mask.all(axis=0))
    if codes.shape[0] == trains[0].shape[0] and len(cols):
        region = codes[:, cols[0]:cols[-1] + 1]
        out["longest_copy_px"] = longest_column_copy(region, trains, wp) * f
        out["generated_width_px"] = int(region.shape[1]) * f
        out["holdout_longest_copy_px"] = max((longest_column_copy(t, trains, wp) * f for t in holdouts), default=None)
        out["holdout_width_px"] = sum(int(t.shape[1]) for t in holdouts) * f
    return out


def analyse_samples(samples_dir: Path, canvases: Path, patch: tuple[int, int], names: list[str] | None = None) -> dict:
    """Every `<name>.codes.npy` in `samples_dir` (or the named ones) with its sidecar -> {name: figures}."""
    cset = CanvasSet(canvases)
    found = sorted(samples_dir.glob("*.codes.npy"))
    out = {}
    for path in found:
        name = path.name[:-len(".codes.npy")]
        if names is not None and name not in names:
            continue
        sidecar_path = samples_dir / f"{name}.json"
        sidecar = atomic.read_json(sidecar_path) if sidecar_path.is_file() else {}
        out[name] = analyse(np.load(path, allow_pickle=False), sidecar, cset, patch)
    missing = sorted(set(names or []) - set(out))
    if missing:
        raise FileNotFoundError(f"{samples_dir}: no codes for {missing} (set sample.save_codes: true)")
    return out


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.formats.renderer_io import model_config
    from pipeline.formats.shards import ShardError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--sample", nargs="*", default=None, help="sample names (default: every saved code grid)")
    ap.add_argument("--samples", default=None, help="samples folder (default run_dir/samples)")
    ap.add_argument("--canvases", default=None, help="canvas set (default run_dir/tokens/single_image)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        hp, wp, _ = model_config(cfg).patch
        samples = cfg.resolve(args.samples) if args.samples else cfg.run_dir / "samples"
        canvases = cfg.resolve(args.canvases) if args.canvases else cfg.run_dir / "tokens" / "single_image"
        result = analyse_samples(samples, canvases, (hp, wp), args.sample)
    except (ConfigError, ShardError, FileNotFoundError) as e:
        log.error("%s", e)
        return 1
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic.write_text(cfg.resolve(args.out), text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

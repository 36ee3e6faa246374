"""The validation curve of a run: held-out bits per token of every checkpoint saved at an epoch's end.

    python -m pipeline.training.curve --config run.yaml --data HELD_OUT_TOKENS --out curve.json
                                      [--direction down-right-forward] [--batch-size 16] [--prune]

A run whose `train.save_every` is its number of optimizer steps per epoch saves a checkpoint at the end of
every epoch (the ablation harness, pipeline.ablation, sets it so). This walks the run's complete
checkpoints, takes those whose data position is the start of an epoch (`position.batch == 0` in their
train_meta.json: the epoch before it is complete), consolidates each one's fp32 weights (the export's
`consolidated_state`) and runs the teacher-forced held-out pass (`validate.validation_bits_per_token`)
on it. Checkpoints cut mid-epoch (a stop or a signal) are skipped.

Output: one JSON, rewritten atomically after every checkpoint, so an interrupted call keeps what it
measured and a second call measures only what is new:

    {"token_set": ..., "direction": ..., "points": [{"epoch": 1, "step": 352, "tag": "global_step352",
     "bits_per_token": ..., "loss_nats": ..., "tokens": ..., "items": ...}, ...]}

`--prune` then deletes every checkpoint but the newest (the training is over and measured: only the
latest is needed to resume or re-export).

Validating saved checkpoints after the run, rather than inside the loop at epoch ends, keeps the training
loop untouched and costs the same forward passes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from model.config import RenderConfig
from model.renderer import Renderer
from pipeline import atomic
from pipeline.errors import entry_point
from pipeline.formats.shards import TokenSet
from pipeline.formats.text_tokenizer import TextTokenizer
from pipeline.training.checkpoint import CheckpointError, CheckpointStore, step_of
from pipeline.training.export import consolidated_state
from pipeline.training.validate import validation_bits_per_token

log = logging.getLogger("curve")


def epoch_end_tags(store: CheckpointStore) -> list[tuple[str, int]]:
    """(tag, epochs completed) of every complete checkpoint saved at an epoch boundary, oldest first."""
    out = []
    for tag in store.complete_tags():
        position = store.read_meta(tag).get("position") or {}
        if position.get("batch") == 0 and int(position.get("epoch", 0)) > 0:
            out.append((tag, int(position["epoch"])))
    return out


def checkpoint_renderer(store: CheckpointStore, tag: str,
                        device: torch.device) -> tuple[Renderer, TextTokenizer | None]:
    """The renderer of checkpoint `tag` (fp32 weights consolidated from ZeRO) and its caption tokenizer."""
    meta = store.read_meta(tag)
    cfg = RenderConfig.from_dict(meta["model"])
    tokenizer = None
    if cfg.has_text:
        path = meta.get("tokenizer_path")
        if not path or not Path(path).is_file():
            raise CheckpointError(f"{store.folder / tag}: the model has text but its tokenizer {path} is missing")
        tokenizer = TextTokenizer.load(path)
    model = Renderer(cfg)
    model.load_state_dict(consolidated_state(store.folder, tag), strict=True)
    return model.to(device).eval(), tokenizer


def validation_curve(store: CheckpointStore, tokens: TokenSet, out: Path, direction: str, batch_size: int,
                     seed: int, device: torch.device) -> dict:
    """Measure every epoch-end checkpoint not yet in `out`; returns the whole curve."""
    try:
        curve = atomic.read_json(out)
    except FileNotFoundError:
        curve = {}
    if curve.get("token_set") != str(tokens.folder) or curve.get("direction") != direction:
        curve = {"token_set": str(tokens.folder), "direction": direction, "points": []}
    done = {p["tag"] for p in curve["points"]}
    for tag, epoch in epoch_end_tags(store):
        if tag in done:
            continue
        model, tokenizer = checkpoint_renderer(store, tag, device)
        r = validation_bits_per_token(model, tokens, direction, batch_size, tokenizer, seed=seed)
        curve["points"].append({"epoch": epoch, "step": step_of(tag), "tag": tag, "bits_per_token": r["bits_per_token"],
                                "loss_nats": r["loss_nats"], "tokens": r["tokens"], "items": r["items"]})
        curve["points"].sort(key=lambda p: p["step"])
        atomic.write_json(out, curve)
        log.info("epoch %d (%s): %.4f bits per token", epoch, tag, r["bits_per_token"])
    return curve


@entry_point(user_errors=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.training.settings import checkpoint_dir, read_train_section
    from pipeline.training.validate import held_out_arguments

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", required=True, help="held-out token set")
    ap.add_argument("--out", required=True, help="the curve's JSON (read first: only new checkpoints are measured)")
    held_out_arguments(ap, batch_size=16)
    ap.add_argument("--prune", action="store_true", help="afterwards keep only the newest checkpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    store = CheckpointStore(checkpoint_dir(cfg, read_train_section(cfg)))
    curve = validation_curve(store, TokenSet(cfg.resolve(args.data)), cfg.resolve(args.out), args.direction,
                             args.batch_size, cfg.seed, torch.device(args.device))
    if not curve["points"]:
        raise CheckpointError(f"{store.folder}: no checkpoint saved at the end of an epoch")
    if args.prune:
        CheckpointStore(store.folder, keep_last=1).prune()
    return 0

if __name__ == "__main__":
    raise SystemExit(main())

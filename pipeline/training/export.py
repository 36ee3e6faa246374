"""Export a trained renderer: DeepSpeed ZeRO checkpoint -> one safetensors file + config JSON + tokenizer.

    python -m pipeline.training.export --config run.yaml [--tag global_step1200] [--out DIR]

Reads the checkpoint named by `latest` (or --tag) under run_dir/train/checkpoints, consolidates the
ZeRO-partitioned fp32 master weights with DeepSpeed's `zero_to_fp32`
(`get_fp32_state_dict_from_zero_checkpoint`; ZeRO stages 1, 2 and 3, any number of ranks) and writes
run_dir/train/export/ (pipeline.formats.renderer_io describes the folder). The training stage calls this at
the end of a run. The weights are written first and renderer.json last, so a complete
renderer.json vouches for its weights (its sha256 is recorded there).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from model.config import RenderConfig
from pipeline import atomic
from pipeline.errors import entry_point
from pipeline.formats.renderer_io import CONFIG, TOKENIZER, WEIGHTS
from pipeline.training.checkpoint import CheckpointError, CheckpointStore

log = logging.getLogger(__name__)


def consolidated_state(checkpoint_dir: str | Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of a ZeRO checkpoint (every tensor its own contiguous copy)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = Path(checkpoint_dir) / tag
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder missing")
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except (ValueError, FileNotFoundError) as e:
        raise CheckpointError(f"{folder}: cannot consolidate the ZeRO checkpoint ({e})") from e
    # Tied weights come back as one tensor under two names; safetensors stores each name on its own.
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items()}


def write_export(state: dict[str, torch.Tensor], cfg: RenderConfig, out_dir: str | Path,
                 tokenizer_path: Path | None, provenance: dict) -> Path:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    weights = out_dir / WEIGHTS
    with atomic.atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "nuwa-infinity-renderer"})
    if tokenizer_path is not None:
        with atomic.atomic_path(out_dir / TOKENIZER) as tmp:
            shutil.copyfile(tokenizer_path, tmp)
    atomic.write_json(out_dir / CONFIG, {"config": cfg.to_dict(), "sha256": atomic.sha256_file(weights),
                                         "weights": WEIGHTS, **provenance})
    return weights


def _existing_export(out_dir: str | Path, checkpoint: Path) -> Path | None:
    """The export folder when it already holds an intact export of `checkpoint`, else None."""
    out_dir = Path(out_dir)
    try:
        record = atomic.read_json(out_dir / CONFIG)
    except (FileNotFoundError, ValueError):
        return None
    weights = out_dir / WEIGHTS
    if record.get("checkpoint") != str(checkpoint) or not weights.is_file():
        return None
    if record.get("sha256") and record["sha256"] != atomic.sha256_file(weights):
        return None
    return out_dir


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> Path:
    """Export checkpoint `tag` (default: latest) of checkpoint_dir; the model config comes from the
    checkpoint's train_meta.json and the tokenizer from the path recorded there."""
    store = CheckpointStore(checkpoint_dir)
    tag = tag or store.latest_tag()
    if tag is None:
        raise CheckpointError(f"{Path(checkpoint_dir) / 'latest'}: no checkpoint to export")
    done = _existing_export(out_dir, Path(checkpoint_dir) / tag)
    if done is not None:  # a re-run of a finished stage: the export is already this checkpoint's
        log.info("%s already holds the export of %s; not rewritten", done, tag)
        return done
    meta = store.read_meta(tag)
    cfg = RenderConfig.from_dict(meta["model"])
    tok = meta.get("tokenizer_path")
    tok_path = Path(tok) if tok else None
    if cfg.has_text and (tok_path is None or not tok_path.is_file()):
        raise CheckpointError(f"{Path(checkpoint_dir) / tag}: the model has text but its tokenizer "
                              f"{tok_path} is missing")
    state = consolidated_state(checkpoint_dir, tag)
    out = write_export(state, cfg, out_dir, tok_path if cfg.has_text else None,
                       {"checkpoint": str(Path(checkpoint_dir) / tag), "global_steps": meta.get("global_steps")})
    log.info("exported %s (%d tensors, %d parameters) -> %s", tag, len(state),
             sum(v.numel() for v in state.values()), out)
    return out


@entry_point
def main(argv: list[str] | None = None) -> int:
    from pipeline.config import load_config
    from pipeline.formats.renderer_io import export_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--tag", default=None, help="checkpoint tag (default: the one `latest` names)")
    ap.add_argument("--out", default=None, help="output folder (default run_dir/train/export)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pipeline.training.settings import checkpoint_dir, read_train_section

    cfg = load_config(args.config)
    folder = checkpoint_dir(cfg, read_train_section(cfg))
    export_checkpoint(folder, Path(args.out) if args.out else export_dir(cfg), args.tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Resuming on another number of ranks: DeepSpeed's universal checkpoint, converted and loaded by the trainer.

Teams resume on whatever nodes they get back, so a checkpoint saved by N ranks must resume on M.

What DeepSpeed 0.19.8 does by itself (read in deepspeed/runtime/engine.py and zero/): a ZeRO
checkpoint holds one optimizer shard per data-parallel rank (fp32 master weights, Adam's two
moments), cut for the world size that saved it. `engine.load_checkpoint` refuses optimizer state
saved by another data-parallel size ("Automatic adjustment of ZeRO's optimizer state partitioning
with a new world size is not currently supported", `_load_zero_checkpoint`), and that check comes
before anything reads `zero_optimization.elastic_checkpoint`, so ZeRO-1/2's elastic format does not
help across sizes in this version. What works for ZeRO-1, 2 and 3 alike is the universal checkpoint:
`deepspeed.checkpoint.ds_to_universal` rewrites a checkpoint as one folder per parameter holding its
full fp32 value and optimizer states, independent of any partitioning, and an engine built with
`checkpoint.load_universal: true` cuts its own shards out of it.

So, when `train_meta.json` says the checkpoint was saved by another number of ranks, the trainer:
1. rank 0 converts `checkpoints/<tag>` into `checkpoints/universal/<tag>` (once: written under a
   temporary name and renamed, so a killed conversion is redone, a finished one reused);
2. every rank builds its engine with `checkpoint.load_universal: true` and loads from there; the
   model, Adam's moments, the LR schedule and the step count carry over exactly;
3. the data position carries over unchanged: it counts global batches, and the order of an epoch
   and the cut into global batches depend on (seed, epoch, global batch) alone, never on the ranks
   (pipeline.training.data), so no item of the epoch is skipped or repeated. The global batch must
   stay the same (the checkpoint check refuses another one); micro batch x accumulation adapts;
4. per-rank random generators (P-NAR masks) cannot be mapped from N ranks to M: they are re-seeded
   from (seed, rank, step), deterministically;
5. the next checkpoint is an ordinary one for M ranks; pruning removes the converted copy once
   `latest` names a newer checkpoint.
The ZeRO stage itself must stay the same (the checkpoint check says so).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
from pathlib import Path

from pipeline import atomic
from pipeline.errors import writing

log = logging.getLogger(__name__)

FOLDER = "universal"


def root(checkpoints: Path) -> Path:
    """The folder the engine loads a converted checkpoint from (its tag is the sub-folder)."""
    return Path(checkpoints) / FOLDER


def convert(checkpoints: Path, tag: str, saved_by: int, ranks: int) -> Path:
    """Rank 0: make `checkpoints/universal/<tag>` from `checkpoints/<tag>` unless it exists; returns its root."""
    from deepspeed.checkpoint import ds_to_universal

    out_root = root(checkpoints)
    out = out_root / tag
    if out.is_dir():
        log.info("reusing the universal checkpoint %s", out)
        return out_root
    tmp = out_root / f".{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    args = argparse.Namespace(input_folder=str(Path(checkpoints) / tag), output_folder=str(tmp),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)  # a model without tensor parallelism saves none
    log.info("checkpoint %s was saved by %d rank(s), this run has %d: converting it to a universal checkpoint "
             "in %s", tag, saved_by, ranks, out)
    chatter = io.StringIO()  # the converter prints its arguments and progress bars: keep them for errors only
    try:
        with writing(out), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            out_root.mkdir(parents=True, exist_ok=True)
            ds_to_universal.main(args)
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        log.error("universal checkpoint conversion of %s failed; its output:\n%s", tag, chatter.getvalue()[-4000:])
        raise
    atomic.write_text(out_root / "latest_universal", tag)  # the converter wrote the temporary name there
    atomic.fsync_path(out_root, best_effort=True)
    return out_root


def remove_stale(checkpoints: Path, keep: str | None) -> list[str]:
    """Delete converted copies other than `keep` (and temporaries of killed conversions)."""
    folder = root(checkpoints)
    if not folder.is_dir():
        return []
    gone = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and p.name != keep]
    if keep is None or not (folder / keep).is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    else:
        for name in gone:
            shutil.rmtree(folder / name, ignore_errors=True)
    return gone

"""Crash-safe DeepSpeed checkpoints with everything an exact resume needs.

Layout (run_dir/train/checkpoints/):

    global_step120/                     one checkpoint (DeepSpeed's own files: model states, ZeRO shards,
      mp_rank_00_model_states.pt        optimizer and LR-scheduler state, our client state)
      zero_pp_rank_*_optim_states.pt
      trainer_state/rank00000.pt        per-rank random generators (python, numpy, torch, CUDA, P-NAR)
      train_meta.json                   model config + run settings; written LAST, so it marks completion
    latest                              the tag of the newest complete checkpoint (DeepSpeed's format)

Writing order: every rank saves its DeepSpeed files and its trainer_state file, all ranks meet at a
barrier, then rank 0 writes train_meta.json and only then replaces `latest` (both atomically). A crash
at any moment leaves `latest` naming the previous complete checkpoint; the half-written folder is
deleted on the next start. DeepSpeed's own `latest` writer is not used (it writes in place).

One run per folder: the trainer's rank 0 holds an exclusive lock on `checkpoints/.lock` (fcntl.flock)
for the whole run, and writes into it who holds it (host, pid, start time, config). A second run on
the same folder fails at once naming the holder, so two trainers never write one folder (the kernel
drops the lock when its process ends, however it ends). On a file system without locks (Lustre
mounted without `flock`, say) the run warns and goes on unprotected.

Resume: `latest` -> tag; train_meta.json is compared with the current run before anything is built
(`check_compatible`): a model, data grid, batch size, loss region, schedule or tokenizer that differs
is an error listing every difference, never a silent mix. Per-rank generator files are loaded with
`torch.load(weights_only=True)`; DeepSpeed loads its own files.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import atomic
from pipeline.errors import PipelineError, WriteError, writing
from pipeline.training import universal

log = logging.getLogger(__name__)

META_NAME = "train_meta.json"
LATEST = "latest"
LOCK_NAME = ".lock"
TAG_RE = re.compile(r"^global_step(\d+)$")


class CheckpointError(PipelineError, RuntimeError):
    """A checkpoint that cannot be used (missing, incomplete, or contradicting the run's config)."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


def step_of(tag: str) -> int | None:
    m = TAG_RE.match(tag)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- random generators


def capture_rng(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every random generator of this process, as tensors and plain values (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ----------------------------------------------------------------------------- consistency


# Settings that may change between a checkpoint and its resumption without changing what is trained.
IGNORED_MODEL_KEYS = ("checkpoint_blocks", "pnar_steps")
# Keys older checkpoints recorded that no longer have to match: the number of ranks (a checkpoint
# resumes on any number through pipeline.training.universal).
IGNORED_SAVED_KEYS = ("train.world_size",)


def compatibility_record(model_cfg: dict, train: dict) -> dict:
    """The flat record that must match between a checkpoint and the run resuming from it."""
    out = {f"model.{k}": v for k, v in sorted(model_cfg.items()) if k not in IGNORED_MODEL_KEYS}
    out.update({f"train.{k}": v for k, v in sorted(train.items())})
    return out


def check_compatible(saved: dict, current: dict, where: str) -> None:
    """Raise CheckpointError listing every key whose value differs (JSON-normalised)."""
    import json

    def norm(v):
        return json.loads(json.dumps(v))

    diffs = []
    for key in sorted((set(saved) | set(current)) - set(IGNORED_SAVED_KEYS)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if norm(a) != norm(b):
            diffs.append(f"{key}: checkpoint has {a!r}, this run has {b!r}")
    if diffs:
        raise CheckpointError(
            f"{where}: the run's config contradicts the checkpoint it would resume from:\n  " + "\n  ".join(diffs)
            + "\nUse the checkpoint's settings, or point train.checkpoint_dir (or run_dir) at a new folder.")


# ----------------------------------------------------------------------------- the store


class CheckpointStore:
    def __init__(self, folder: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ one run per folder
    def lock(self, what: str) -> None:
        """Hold the folder's exclusive lock until this process ends; CheckpointError naming the holder if
        another process has it. `what` says what this run is (shown to a second run)."""
        if self._lock_fd is not None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "its details are not written yet"
            os.close(fd)
            raise CheckpointError(
                f"{self.folder}: another training run is using this checkpoint folder ({holder}); let it finish "
                "or stop it (its ranks end with it), or give this run another train.checkpoint_dir / run_dir"
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            log.warning("%s: the file system does not support locks (%s); nothing stops a second run from "
                        "using this folder at the same time", path, e.strerror)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"held by pid {os.getpid()} on host {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}, {what}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # ------------------------------------------------------------------ reading
    def latest_tag(self) -> str | None:
        path = self.folder / LATEST
        if not path.is_file():
            return None
        tag = path.read_text().strip()
        if not (self.folder / tag / META_NAME).is_file():
            raise CheckpointError(f"{path} names {tag!r}, but {self.folder / tag / META_NAME} is missing "
                                  "(the checkpoint is incomplete or was deleted)")
        return tag

    def read_meta(self, tag: str) -> dict:
        path = self.folder / tag / META_NAME
        try:
            return atomic.read_json(path)
        except FileNotFoundError:
            raise CheckpointError(f"{path}: missing (incomplete checkpoint)") from None
        except ValueError as e:
            raise CheckpointError(str(e)) from e

    def complete_tags(self) -> list[str]:
        tags = [p.name for p in self.folder.iterdir() if p.is_dir() and step_of(p.name) is not None
                and (p / META_NAME).is_file()] if self.folder.is_dir() else []
        return sorted(tags, key=step_of)

    # ------------------------------------------------------------------ writing (all ranks)
    def save(self, engine, tag: str, client_state: dict, meta: dict, rank_state: dict, rank: int,
             barrier) -> None:
        """Save on every rank; `barrier()` must synchronise all ranks. Rank 0 commits and prunes.

        A failed write (full disk, read-only folder) raises WriteError naming the checkpoint folder and
        the cause, after removing the incomplete folder; `latest` still names the previous checkpoint."""
        try:
            with writing(self.folder / tag):
                engine.save_checkpoint(str(self.folder), tag=tag, client_state=client_state, save_latest=False)
                with atomic.atomic_path(self.folder / tag / "trainer_state" / f"rank{rank:05d}.pt") as tmp:
                    torch.save(rank_state, tmp)
        except WriteError as e:
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            previous = self.latest_tag() if (self.folder / LATEST).is_file() else None
            raise WriteError(f"{e}; checkpoint {tag} is incomplete and was removed, the last complete one is "
                             f"{previous or 'none'}", e.errno, e.filename) from e
        barrier()
        if rank == 0:
            atomic.write_json(self.folder / tag / META_NAME, meta)
            atomic.write_text(self.folder / LATEST, tag)
            self.prune()
        barrier()

    def load(self, engine, tag: str, rank: int, universal_root: Path | None = None) -> tuple[dict, dict | None]:
        """Load model, optimizer and scheduler into `engine`; returns (client state, this rank's RNG state).

        With `universal_root` (a checkpoint saved by another number of ranks, converted by
        pipeline.training.universal; the engine must be built with `checkpoint.load_universal`) the
        state comes from there and there is no per-rank RNG state to return."""
        source = universal_root if universal_root is not None else self.folder
        path, client = engine.load_checkpoint(str(source), tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise CheckpointError(f"{source / tag}: DeepSpeed could not load this checkpoint")
        state_path = self.folder / tag / "trainer_state" / f"rank{rank:05d}.pt"
        if universal_root is not None or not state_path.is_file():
            return client or {}, None
        return client or {}, torch.load(state_path, weights_only=True)

    # ------------------------------------------------------------------ housekeeping (rank 0)
    def remove_stale(self) -> list[str]:
        """Delete folders of saves that never completed, or that are newer than `latest` (a save that
        crashed between writing its marker and the pointer); returns their names."""
        if not self.folder.is_dir():
            return []
        latest = self.latest_tag()
        limit = step_of(latest) if latest else -1
        gone = []
        for p in sorted(self.folder.iterdir()):
            s = step_of(p.name)
            if p.is_dir() and s is not None and (not (p / META_NAME).is_file() or s > limit):
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
        gone += [f"{universal.FOLDER}/{t}" for t in universal.remove_stale(self.folder, keep=latest)]
        atomic.remove_stale_temporaries(self.folder)
        return gone

    def prune(self) -> list[str]:
        """Keep the newest `keep_last` complete checkpoints (never the one `latest` names)."""
        latest = self.latest_tag()
        tags = self.complete_tags()
        gone = []
        for tag in tags[: max(0, len(tags) - self.keep_last)]:
            if tag != latest:
                shutil.rmtree(self.folder / tag, ignore_errors=True)
                gone.append(tag)
        if gone:
            log.info("removed old checkpoints %s (keeping the last %d)", gone, self.keep_last)
        # A converted copy served the resume on another number of ranks; `latest` is now this run's own.
        universal.remove_stale(self.folder, keep=None)
        return gone

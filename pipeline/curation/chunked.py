"""Resumable, rank-sharded chunks: the protocol the curation stages share (10, 15, 20 and 30).

A stage lists its work once, in a fixed order, and cuts it into chunks of `chunk_size` units
(`split`). The protocol, per chunk k:

- Ownership: chunk k belongs to rank k % WORLD_SIZE (`pipeline.ranks`); no process group is needed.
- Fingerprint: a sha256 of everything that changes the chunk's output (its units and the stage's
  settings, as JSON with sorted keys). A changed input or setting therefore redoes exactly the
  chunks it touches.
- Files, in the stage's chunk folder: `chunk-NNNNNN.parquet` (the rows), optionally
  `chunk-NNNNNN.rejects.parquet`, and last `chunk-NNNNNN.done`, a JSON marker holding
  `fingerprint` plus the chunk's counts. Outputs are written atomically (`pipeline.atomic`), so a
  marker vouches only for complete files; the old marker is removed before a chunk is redone.
- Resume: a chunk whose marker holds the wanted fingerprint is skipped. Temporaries a killed run
  left for this rank's own chunks are deleted; another rank's are never touched (it may be writing).
- Merge: rank 0 (or `--merge-only`, whatever the rank) waits until every chunk's marker is
  current, reads the chunks in index order, so that the merged bytes depend neither on the number
  of ranks nor on interruptions, deletes chunk files of an earlier, longer listing, and writes its
  outputs and then its own marker, whose fingerprint covers every chunk's. A run whose merged
  marker and outputs are current is not merged again.

The marker format is the one stages 10, 15, 20 and 30 wrote before this module existed, so runs
finished earlier are recognised as finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline import atomic
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.errors import PipelineError
from pipeline.formats.manifest import read_rows, write_rows
from pipeline.ranks import RankInfo, rank_info

T = TypeVar("T")


class IngestError(PipelineError, RuntimeError):
    """The stage cannot finish: chunks missing after the wait, or nothing usable in the input."""


@dataclass
class DownloadSettings:
    """How the ingest stages fetch remote files (`pipeline.curation.download`); defaults sized for images."""

    timeout_s: float = 30.0
    retries: int = 3
    max_bytes: int = 64 << 20
    backoff_s: float = 1.0
    total_timeout_s: float | None = 300.0


# ---------------------------------------------------------------- fingerprints and markers

def fingerprint(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def chunk_is_current(marker: Path, want: str) -> bool:
    if not marker.is_file():
        return False
    try:
        return atomic.read_json(marker).get("fingerprint") == want
    except ValueError:
        return False  # a marker is written atomically, so this means someone edited it: redo


def remove_own_temporaries(folder: Path, owned: Sequence[int]) -> None:
    """Delete what a killed run left half-written for our chunks (never another rank's, still in flight)."""
    for k in owned:
        for tmp in folder.glob(f".chunk-{k:06d}.*.tmp"):
            tmp.unlink(missing_ok=True)


def wait_for_markers(markers: Sequence[tuple[Path, str]], timeout_s: float, what: str,
                     poll_s: float = 2.0, log: logging.Logger | None = None) -> None:
    """Block until every (marker, fingerprint) is current; IngestError naming the missing ones."""
    log = log or logging.getLogger(what)
    deadline = time.monotonic() + timeout_s
    last_log = 0.0
    while True:
        missing = [m for m, fp in markers if not chunk_is_current(m, fp)]
        if not missing:
            return
        now = time.monotonic()
        if now >= deadline:
            names = ", ".join(p.name for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise IngestError(f"{what}: {len(missing)} chunk(s) not finished by the other ranks after "
                              f"{timeout_s:.0f} s: {names} (re-run the stage; finished chunks are kept)")
        if now - last_log > 60:
            log.info("%s: waiting for %d chunk(s) from other ranks", what, len(missing))
            last_log = now
        time.sleep(min(poll_s, max(0.0, deadline - now)))


def split(units: Sequence[T], size: int) -> list[Sequence[T]]:
    """Consecutive chunks of `size` units (the last one shorter)."""
    return [units[i:i + size] for i in range(0, len(units), size)]


# ---------------------------------------------------------------- one stage's chunks

@dataclass
class ChunkPlan:
    """The chunks of one stage run: where their files live and the fingerprint each must carry."""

    folder: Path
    fingerprints: list[str]
    what: str  # the stage's name, in log lines and errors
    log: logging.Logger
    ranks: RankInfo
    t0: float = field(default_factory=time.monotonic)  # summary lines time the stage from here

    def __len__(self) -> int:
        return len(self.fingerprints)

    def rows(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.parquet"

    def rejects(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.rejects.parquet"

    def marker(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.done"

    @property
    def merged_fingerprint(self) -> str:
        return fingerprint(self.fingerprints)

    def todo(self) -> list[int]:
        """This rank's chunks without a current marker (its killed run's temporaries removed)."""
        owned = [k for k in range(len(self)) if self.ranks.owns(k)]
        remove_own_temporaries(self.folder, owned)
        todo = [k for k in owned if not chunk_is_current(self.marker(k), self.fingerprints[k])]
        if len(owned) > len(todo):
            self.log.info("skipping %d finished chunk(s)", len(owned) - len(todo))
        return todo

    def start(self, k: int) -> None:
        """Before (re)writing chunk k: its old marker must not vouch for the files being replaced."""
        self.marker(k).unlink(missing_ok=True)

    def finish(self, k: int, stats: dict[str, Any]) -> None:
        """Written last, after every file of chunk k."""
        atomic.mark_done(self.marker(k), {"fingerprint": self.fingerprints[k], **stats})

    def wait(self, timeout_s: float) -> None:
        wait_for_markers([(self.marker(k), fp) for k, fp in enumerate(self.fingerprints)], timeout_s, self.what,
                         log=self.log)

    def read_all(self, rejects: bool = False) -> list[dict]:
        """Every chunk's rows (or rejects), in chunk order."""
        path = self.rejects if rejects else self.rows
        return [r for k in range(len(self)) for r in read_rows(path(k))]

    def remove_stale(self) -> None:
        """Delete the chunk files of an earlier, longer listing (they would confuse a later merge)."""
        for stale in sorted(self.folder.glob("chunk-*")):
            if int(stale.name[6:12]) >= len(self):
                stale.unlink(missing_ok=True)


def require_sources(sources: Sequence[Any], config_name: str, section: str, kinds: str) -> None:
    if not sources:
        raise ConfigError(f"{config_name}: {section}.sources is empty; name at least one {kinds} source")


def plan_chunks(units: Sequence[T], size: int, settings: dict, key: str, describe: Callable[[T], Any],
                folder: Path, what: str, log: logging.Logger, ranks: RankInfo | None, noun: str
                ) -> tuple[list[Sequence[T]], ChunkPlan]:
    """Cut `units` into chunks, fingerprint each (`settings` plus its units under `key`, each as
    `describe(unit)`), and make the chunk folder. `ranks` None: from the launcher's environment."""
    ranks = ranks or rank_info()
    chunks = split(units, size)
    fps = [fingerprint({**settings, key: [describe(u) for u in c]}) for c in chunks]
    plan = ChunkPlan(folder, fps, what, log, ranks)
    plan.folder.mkdir(parents=True, exist_ok=True)
    log.info("%d %s(s) in %d chunk(s) of %d; rank %d of %d", len(units), noun, len(chunks), size, ranks.rank,
             ranks.world_size)
    return chunks, plan


def already_merged(marker: Path, want: str, outputs: Sequence[Path]) -> dict | None:
    """The merged summary when `marker` holds fingerprint `want` and every output exists, else None."""
    if chunk_is_current(marker, want) and all(p.is_file() for p in outputs):
        return atomic.read_json(marker)
    return None


# ---------------------------------------------------------------- the ingest stages (rows + rejects)

def summary_line(log: logging.Logger, what: str, s: dict, seconds: float, unit: str = "items") -> None:
    """One line: seen, kept (and clips when the stage makes several rows per unit), rejects by reason."""
    rej = dict(s["rejected"])
    clips = f" ({s['clips']} clips)" if "clips" in s else ""
    log.info("%s: seen %d, kept %d%s, rejected %d %s, %.1f s (%.2f %s/s)", what, s["seen"], s["kept"], clips,
             sum(rej.values()), json.dumps(dict(sorted(rej.items()))), seconds,
             s["seen"] / seconds if seconds > 0 else 0.0, unit)


def tally(mine: dict, stats: dict) -> None:
    """Add one chunk's marker counts to this rank's running totals (`rejected` is a Counter)."""
    for key, value in stats.items():
        if key == "rejected":
            mine["rejected"].update(value)
        elif key in mine:
            mine[key] += value


def chunk_stats(n_seen: int, rows: list[dict], rejected: list[dict], rows_key: str | None) -> dict:
    """A chunk's marker counts: units seen and kept, rejects by reason, and its rows under rows_key if set."""
    reasons = Counter(r["reason"] for r in rejected)
    stats = {"seen": n_seen, "kept": n_seen - len(rejected), "rejected": dict(sorted(reasons.items()))}
    if rows_key:
        stats[rows_key] = len(rows)
    return stats


@dataclass
class MergeTarget:
    """Where an ingest stage's merge writes, and how its summary reads."""

    rows: Path  # manifest.parquet / clips.parquet
    rejects: Path
    marker: Path  # written last
    row_columns: Sequence[str]
    reject_columns: Sequence[str]
    rows_key: str | None  # summary key counting rows when a unit gives several (clips), else None
    unit: str  # in the summary line's rate
    nothing_usable: Callable[[dict], str]  # the error message when no row is left, from the summary


def save_chunk(plan: ChunkPlan, target: MergeTarget, k: int, n_seen: int, rows: list[dict], rejected: list[dict],
               mine: dict, **extra: Any) -> None:
    """Chunk k's rows and rejects, then (last) its marker; its counts are added to this rank's `mine`."""
    write_rows(plan.rows(k), rows, target.row_columns)
    write_rows(plan.rejects(k), rejected, target.reject_columns)
    stats = chunk_stats(n_seen, rows, rejected, target.rows_key)
    plan.finish(k, {**stats, **extra})
    tally(mine, stats)


def merge_ingest(plan: ChunkPlan, target: MergeTarget) -> dict:
    """Join every chunk's rows and rejects in chunk order; fails (rejects written) when no row is left."""
    summary = already_merged(target.marker, plan.merged_fingerprint, (target.rows, target.rejects))
    if summary is not None:
        plan.log.info("%s already merged from these chunks (%s); not rewritten", target.rows.name, target.rows)
        summary_line(plan.log, plan.what, summary, time.monotonic() - plan.t0, target.unit)
        return summary
    rows = plan.read_all()
    rejected = plan.read_all(rejects=True)
    counts = Counter()
    for k in range(len(plan)):
        counts.update({key: atomic.read_json(plan.marker(k))[key] for key in ("seen", "kept")})
    plan.remove_stale()
    summary = {"fingerprint": plan.merged_fingerprint, **chunk_stats(counts["seen"], rows, rejected, target.rows_key),
               "kept": counts["kept"]}
    write_rows(target.rejects, rejected, target.reject_columns)
    if not rows:
        raise IngestError(target.nothing_usable(summary))
    write_rows(target.rows, rows, target.row_columns)
    atomic.mark_done(target.marker, summary)
    summary_line(plan.log, plan.what, summary, time.monotonic() - plan.t0, target.unit)
    return summary


def run_chunks(plan: ChunkPlan, merge_only: bool, timeout_s: float, unit: str,
               process: Callable[[list[int], dict], None], mine: dict, merge: Callable[[], dict]) -> dict:
    """The stage's life cycle: this rank's unfinished chunks, then (rank 0 or merge_only) wait and merge.

    `process(todo, mine)` does the chunks and adds their counts to `mine`; returns this rank's totals
    on ranks other than 0, else the merge's summary.
    """
    ranks = plan.ranks
    if not merge_only:
        process(plan.todo(), mine)
        summary_line(plan.log, f"{plan.what} rank {ranks.rank}/{ranks.world_size} (this run's chunks)", mine,
                     time.monotonic() - plan.t0, unit)
    if not ranks.is_main and not merge_only:
        return {**mine, "rejected": dict(mine["rejected"])}
    plan.wait(0.0 if merge_only else timeout_s)
    return merge()



# ---------------------------------------------------------------- the stages' command lines

def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def stage_parser(module: str, doc: str, section: str, merge_help: str) -> argparse.ArgumentParser:
    """`--config` and `--merge-only`, the options every chunked stage takes."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    ap.add_argument("--config", required=True, help=f"run YAML (section {section})")
    ap.add_argument("--merge-only", action="store_true", help=merge_help)
    return ap


def ingest_main(argv: list[str] | None, module: str, doc: str, section: str, cls: type, run: Callable[..., dict],
                log: logging.Logger, absent: str, merge_help: str) -> int:
    """`main` of an ingest stage: read its section (a config without one logs `absent`, formatted with
    the config's path, and succeeds: the run has no such data) and call `run(cfg, run_dir, seed, resolve,
    merge_only=..., config_name=...)`."""
    args = stage_parser(module, doc, section, merge_help).parse_args(argv)
    setup_logging()
    run_cfg = load_config(args.config)
    if not run_cfg.has(section):
        log.info(absent, run_cfg.path)
        return 0
    cfg = run_cfg.section(section, cls, required=True)
    log.info("settings: %s", json.dumps(to_dict(cfg), sort_keys=True))
    run(cfg, run_cfg.run_dir, run_cfg.seed, run_cfg.resolve, merge_only=args.merge_only,
        config_name=str(run_cfg.path))
    return 0

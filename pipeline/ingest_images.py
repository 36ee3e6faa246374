"""Stage 10: image ingest (LHQ and friends) -> run_dir/data/images/manifest.parquet + rejects.parquet.

Config section `ingest_images`:

    ingest_images:
      sources:                       # one or more, ingested in this order
        - kind: folder               # folder | hf_dataset | urls
          path: /data/lhq_1024_jpg   # folder, `datasets.save_to_disk` folder, or URL list file
          name: ""                   # namespace for ids when several sources are combined
          image_column: image        # hf_dataset: the image column
          caption_column: caption    # hf_dataset column / metadata.jsonl key / URL-list JSONL key
          url_column: url            # URL-list JSONL key
          split: null                # hf_dataset saved as a DatasetDict: which split
          id_column: null            # hf_dataset: column naming each row (default: the row number)
      min_side: 1024
      size: 1024                     # output side the crop is resized to when read
      crop: center                   # center | random (seeded per id)
      max_image_pixels: 89478485     # PIL's decompression-bomb limit; larger images are rejected
      animated: reject               # reject | first_frame
      workers: 4                     # decode processes; 0 = in this process (debugging)
      chunk_size: 1000               # items per resumable unit of work
      merge_timeout_s: 3600          # how long rank 0 waits for the other ranks' chunks
      download: {timeout_s: 30, retries: 3, max_bytes: 67108864, backoff_s: 1.0}

Sources (folder with metadata.jsonl/csv captions, `datasets.save_to_disk` folder, URL list) are listed
into items, and each item exported or downloaded to a local file, by `pipeline.image_sources`; its
docstring records how each kind is read.

Work is cut into chunks of the sorted item list; chunk k belongs to rank k % WORLD_SIZE. Each chunk
writes `chunks/chunk-NNNNNN.parquet` and `.rejects.parquet`, then its done-marker (holding a
fingerprint of the chunk's items and settings, so a changed source or setting redoes the chunk).
Rank 0 merges the chunks in order once every marker exists, so the manifest's row order (source
order, then source-relative name) and bytes do not depend on the number of ranks or on
interruptions. A merged run is not merged again (stage 30 writes captions and the split into
the same manifest); a changed source or setting rebuilds it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from pipeline import atomic
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.image_checks import Accepted, CheckSettings, IsolatingPool, check_image
from pipeline.image_sources import DownloadSettings, ImageSource, Item, export_or_download, list_items
from pipeline.manifest import IMAGE_COLUMNS, read_rows, write_rows
from pipeline.ranks import RankInfo, rank_info

log = logging.getLogger("ingest_images")

REJECT_COLUMNS = ("id", "path", "source", "reason", "detail")


@dataclass
class IngestImagesConfig:
    sources: list[ImageSource] = field(default_factory=list)
    min_side: int = 1024
    size: int = 1024
    crop: Literal["center", "random"] = "center"
    max_image_pixels: int | None = 89_478_485
    animated: Literal["reject", "first_frame"] = "reject"
    workers: int = 4
    chunk_size: int = 1000
    merge_timeout_s: float = 3600.0
    download: DownloadSettings = field(default_factory=DownloadSettings)
    output_dir: str = "data/images"  # relative to run_dir

    def __post_init__(self):
        if self.min_side < 1 or self.size < 1:
            raise ValueError(f"min_side and size must be >= 1 (got {self.min_side}, {self.size})")
        if self.workers < 0 or self.chunk_size < 1:
            raise ValueError(f"workers must be >= 0 and chunk_size >= 1 "
                             f"(got {self.workers}, {self.chunk_size})")
        if self.max_image_pixels is not None and self.max_image_pixels < 1:
            raise ValueError("max_image_pixels must be >= 1 or null (no limit)")


class IngestError(RuntimeError):
    pass


# ---------------------------------------------------------------- per item (runs in the pool)

def process_item(item: Item, settings: CheckSettings, dl: DownloadSettings, files_dir: str) -> dict:
    """One item -> {"kept": manifest row} or {"reject": rejects row}. Never raises."""
    try:
        if item.pre_reject is not None:
            return _reject(item, item.path or item.origin, *item.pre_reject)
        local = export_or_download(item, Path(files_dir), dl)
        if isinstance(local, tuple):
            return _reject(item, item.path or item.origin, *local)
        result = check_image(local, item.id, settings)
        if not isinstance(result, Accepted):
            return _reject(item, str(local), result.reason, result.detail)
        return {"kept": {
            "id": item.id, "path": str(local), "source": item.source, "width": result.width,
            "height": result.height, "crop": list(result.crop), "size": settings.size,
            "caption": item.caption, "split": "", "format": result.format,
        }}
    except Exception as e:  # a bug for one odd item must not stop 90k others; it is listed with the trace
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return _reject(item, item.path or item.origin, "internal_error", tb)


def _reject(item: Item, path: str, reason: str, detail: str) -> dict:
    return {"reject": {"id": item.id, "path": path, "source": item.source, "reason": reason,
                       "detail": detail}}


# ---------------------------------------------------------------- chunks and markers (shared with caption)

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
                     poll_s: float = 2.0) -> None:
    """Block until every (marker, fingerprint) is current; IngestError naming the missing ones."""
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


# ---------------------------------------------------------------- the stage

@dataclass
class Layout:
    out_dir: Path

    @property
    def files(self) -> Path:
        return self.out_dir / "files"

    @property
    def chunks(self) -> Path:
        return self.out_dir / "chunks"

    def chunk(self, k: int) -> tuple[Path, Path, Path]:
        base = self.chunks / f"chunk-{k:06d}"
        return (base.with_suffix(".parquet"), base.with_name(base.name + ".rejects.parquet"),
                base.with_suffix(".done"))

    @property
    def manifest(self) -> Path:
        return self.out_dir / "manifest.parquet"

    @property
    def rejects(self) -> Path:
        return self.out_dir / "rejects.parquet"

    @property
    def merged_marker(self) -> Path:
        return self.out_dir / "ingest.done"


def run(cfg: IngestImagesConfig, run_dir: Path, seed: int, resolve: Callable[[str], Path],
        ranks: RankInfo | None = None, merge_only: bool = False, config_name: str = "config") -> dict:
    """Ingest every source; returns the summary (of the merge on rank 0, of this rank's chunks otherwise)."""
    if not cfg.sources:
        raise ConfigError(f"{config_name}: ingest_images.sources is empty; name at least one folder, "
                          "hf_dataset or urls source")
    ranks = ranks or rank_info()
    t0 = time.monotonic()
    lay = Layout(run_dir / cfg.output_dir)
    lay.chunks.mkdir(parents=True, exist_ok=True)
    settings = CheckSettings(min_side=cfg.min_side, size=cfg.size, crop=cfg.crop, seed=seed,
                             max_image_pixels=cfg.max_image_pixels, animated=cfg.animated)
    items = list_items(cfg.sources, resolve)
    chunks = [items[i:i + cfg.chunk_size] for i in range(0, len(items), cfg.chunk_size)]
    common = {"settings": dataclasses.asdict(settings), "files": str(lay.files)}
    fps = [fingerprint({**common, "items": [dataclasses.astuple(it) for it in c]}) for c in chunks]
    log.info("%d item(s) in %d chunk(s) of %d; rank %d of %d", len(items), len(chunks), cfg.chunk_size,
             ranks.rank, ranks.world_size)

    mine = {"seen": 0, "kept": 0, "rejected": Counter()}
    if not merge_only:
        owned = [k for k in range(len(chunks)) if ranks.owns(k)]
        remove_own_temporaries(lay.chunks, owned)
        todo = [k for k in owned if not chunk_is_current(lay.chunk(k)[2], fps[k])]
        skipped = len(owned) - len(todo)
        if skipped:
            log.info("skipping %d finished chunk(s)", skipped)
        _process_chunks(cfg, lay, settings, chunks, fps, todo, mine)
        _summary_line(f"ingest_images rank {ranks.rank}/{ranks.world_size} (this run's chunks)", mine,
                      time.monotonic() - t0)
    if not ranks.is_main and not merge_only:
        return {**mine, "rejected": dict(mine["rejected"])}
    markers = [(lay.chunk(k)[2], fps[k]) for k in range(len(chunks))]
    wait_for_markers(markers, 0.0 if merge_only else cfg.merge_timeout_s, "ingest_images")
    return _merge(lay, chunks, fps, t0)


def _process_chunks(cfg, lay: Layout, settings, chunks, fps, todo: list[int], mine: dict) -> None:
    if not todo:
        return
    lay.files.mkdir(parents=True, exist_ok=True)
    total = sum(len(chunks[k]) for k in todo)
    pool = IsolatingPool(min(cfg.workers, total))
    fn = functools.partial(process_item, settings=settings, dl=cfg.download, files_dir=str(lay.files))
    try:
        with tqdm(total=total, desc="ingest images", unit="img", mininterval=1.0, file=sys.stderr) as bar:
            for k in todo:
                t = time.monotonic()
                rows, rej_path, marker = lay.chunk(k)
                marker.unlink(missing_ok=True)
                results = pool.map(fn, chunks[k], on_crash=lambda it: _reject(
                    it, it.path or it.origin, "worker_crashed", "the decoder process died on this file"),
                    progress=lambda: bar.update(1))
                kept = [r["kept"] for r in results if "kept" in r]
                rejected = [r["reject"] for r in results if "reject" in r]
                write_rows(rows, kept, IMAGE_COLUMNS)
                write_rows(rej_path, rejected, REJECT_COLUMNS)
                reasons = Counter(r["reason"] for r in rejected)
                atomic.mark_done(marker, {"fingerprint": fps[k], "seen": len(results), "kept": len(kept),
                                          "rejected": dict(sorted(reasons.items())),
                                          "seconds": round(time.monotonic() - t, 3)})
                mine["seen"] += len(results)
                mine["kept"] += len(kept)
                mine["rejected"].update(reasons)
    finally:
        pool.close()


def _merge(lay: Layout, chunks, fps, t0: float) -> dict:
    merged_fp = fingerprint(fps)
    if chunk_is_current(lay.merged_marker, merged_fp) and lay.manifest.is_file() and lay.rejects.is_file():
        summary = atomic.read_json(lay.merged_marker)
        log.info("manifest already merged from these chunks (%s); not rewritten", lay.manifest)
        _summary_line("ingest_images", summary, time.monotonic() - t0)
        return summary
    atomic.remove_stale_temporaries(lay.files)  # every chunk is done: no exporter is still writing
    kept: list[dict] = []
    rejected: list[dict] = []
    for k in range(len(chunks)):
        rows, rej_path, _ = lay.chunk(k)
        kept += read_rows(rows)
        rejected += read_rows(rej_path)
    for stale in sorted(lay.chunks.glob("chunk-*")):  # chunks of an earlier, longer listing
        if int(stale.name[6:12]) >= len(chunks):
            stale.unlink(missing_ok=True)
    write_rows(lay.rejects, rejected, REJECT_COLUMNS)
    reasons = Counter(r["reason"] for r in rejected)
    summary = {"fingerprint": merged_fp, "seen": len(kept) + len(rejected), "kept": len(kept),
               "rejected": dict(sorted(reasons.items()))}
    if not kept:
        raise IngestError(f"no usable image among {summary['seen']} item(s) (rejected by reason: "
                          f"{summary['rejected']}); the reasons per file are in {lay.rejects}")
    write_rows(lay.manifest, kept, IMAGE_COLUMNS)
    atomic.mark_done(lay.merged_marker, summary)
    _summary_line("ingest_images", summary, time.monotonic() - t0)
    return summary


def _summary_line(what: str, s: dict, seconds: float) -> None:
    rej = dict(s["rejected"])
    rate = s["seen"] / seconds if seconds > 0 else 0.0
    log.info("%s: seen %d, kept %d, rejected %d %s, %.1f s (%.1f items/s)", what, s["seen"], s["kept"],
             sum(rej.values()), json.dumps(dict(sorted(rej.items()))), seconds, rate)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.ingest_images", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="run YAML (section ingest_images)")
    ap.add_argument("--merge-only", action="store_true",
                    help="only merge finished chunks, whatever RANK says (fails naming any that are missing)")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        run_cfg = load_config(args.config)
        if not run_cfg.has("ingest_images"):
            log.info("%s has no ingest_images section: no images to ingest, nothing to do", run_cfg.path)
            return 0
        cfg = run_cfg.section("ingest_images", IngestImagesConfig, required=True)
        log.info("settings: %s", json.dumps(to_dict(cfg), sort_keys=True))
        run(cfg, run_cfg.run_dir, run_cfg.seed, run_cfg.resolve, merge_only=args.merge_only,
            config_name=str(run_cfg.path))
    except (ConfigError, IngestError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

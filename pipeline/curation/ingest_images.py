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
into items, and each item exported or downloaded to a local file, by `pipeline.curation.image_sources`; its
docstring records how each kind is read.

Work follows the chunk protocol of `pipeline.curation.chunked`: chunks of the sorted item list, chunk k on
rank k % WORLD_SIZE, each writing `chunks/chunk-NNNNNN.parquet` and `.rejects.parquet`, then its
done-marker (fingerprint: the chunk's items and the check settings, so a changed source or setting
redoes the chunk). Rank 0 merges the chunks in order once every marker exists, so the manifest's
row order (source order, then source-relative name) and bytes do not depend on the number of ranks
or on interruptions. A merged run is not merged again (stage 30 writes captions and the split into
the same manifest); a changed source or setting rebuilds it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from pipeline import atomic
from pipeline.curation import chunked
from pipeline.curation.chunked import DownloadSettings
from pipeline.curation.image_checks import Accepted, CheckSettings, IsolatingPool, check_image
from pipeline.curation.image_sources import ImageSource, Item, export_or_download, list_items
from pipeline.errors import WriteError, entry_point
from pipeline.formats.manifest import IMAGE_COLUMNS
from pipeline.ranks import RankInfo

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


# ---------------------------------------------------------------- per item (runs in the pool)

def process_item(item: Item, settings: CheckSettings, dl: DownloadSettings, files_dir: str) -> dict:
    """One item -> {"kept": manifest row} or {"reject": rejects row}. Raises only WriteError (the disk)."""
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
    except WriteError:  # a full or read-only disk is no fault of the item: the stage stops and says so
        raise
    except Exception as e:  # a bug for one odd item must not stop 90k others; it is listed with the trace
        tb = traceback.format_exception_only(type(e), e)[-1].strip()
        return _reject(item, item.path or item.origin, "internal_error", tb)


def _reject(item: Item, path: str, reason: str, detail: str) -> dict:
    return {"reject": {"id": item.id, "path": path, "source": item.source, "reason": reason,
                       "detail": detail}}


# ---------------------------------------------------------------- the stage

def run(cfg: IngestImagesConfig, run_dir: Path, seed: int, resolve: Callable[[str], Path],
        ranks: RankInfo | None = None, merge_only: bool = False, config_name: str = "config") -> dict:
    """Ingest every source; returns the summary (of the merge on rank 0, of this rank's chunks otherwise)."""
    chunked.require_sources(cfg.sources, config_name, "ingest_images", "folder, hf_dataset or urls")
    out_dir = run_dir / cfg.output_dir
    files = out_dir / "files"
    settings = CheckSettings(min_side=cfg.min_side, size=cfg.size, crop=cfg.crop, seed=seed,
                             max_image_pixels=cfg.max_image_pixels, animated=cfg.animated)
    items = list_items(cfg.sources, resolve)
    chunks, plan = chunked.plan_chunks(
        items, cfg.chunk_size, {"settings": dataclasses.asdict(settings), "files": str(files)}, "items",
        dataclasses.astuple, out_dir / "chunks", "ingest_images", log, ranks, "item")
    target = chunked.MergeTarget(
        rows=out_dir / "manifest.parquet", rejects=out_dir / "rejects.parquet", marker=out_dir / "ingest.done",
        row_columns=IMAGE_COLUMNS, reject_columns=REJECT_COLUMNS, rows_key=None, unit="items",
        nothing_usable=lambda s: (f"no usable image among {s['seen']} item(s) (rejected by reason: {s['rejected']}); "
                                  f"the reasons per file are in {out_dir / 'rejects.parquet'}"))

    def merge() -> dict:
        atomic.remove_stale_temporaries(files)  # every chunk is done: no exporter is still writing
        return chunked.merge_ingest(plan, target)

    process = functools.partial(_process_chunks, cfg, plan, target, settings, chunks, files)
    mine = {"seen": 0, "kept": 0, "rejected": Counter()}
    return chunked.run_chunks(plan, merge_only, cfg.merge_timeout_s, "items", process, mine, merge)


def _process_chunks(cfg: IngestImagesConfig, plan: chunked.ChunkPlan, target: chunked.MergeTarget,
                    settings: CheckSettings, chunks, files: Path, todo: list[int], mine: dict) -> None:
    if not todo:
        return
    files.mkdir(parents=True, exist_ok=True)
    total = sum(len(chunks[k]) for k in todo)
    pool = IsolatingPool(min(cfg.workers, total))
    fn = functools.partial(process_item, settings=settings, dl=cfg.download, files_dir=str(files))
    try:
        with tqdm(total=total, desc="ingest images", unit="img", mininterval=1.0, file=sys.stderr) as bar:
            for k in todo:
                t = time.monotonic()
                plan.start(k)
                results = pool.map(fn, chunks[k], on_crash=lambda it: _reject(
                    it, it.path or it.origin, "worker_crashed", "the decoder process died on this file"),
                    progress=lambda: bar.update(1))
                kept = [r["kept"] for r in results if "kept" in r]
                rejected = [r["reject"] for r in results if "reject" in r]
                chunked.save_chunk(plan, target, k, len(results), kept, rejected, mine,
                                   seconds=round(time.monotonic() - t, 3))
    finally:
        pool.close()


@entry_point
def main(argv: list[str] | None = None) -> int:
    return chunked.ingest_main(argv, "pipeline.curation.ingest_images", __doc__, "ingest_images",
                               IngestImagesConfig, run, log,
                               "%s has no ingest_images section: no images to ingest, nothing to do",
                               "only merge finished chunks, whatever RANK says (fails naming any that are missing)")


if __name__ == "__main__":
    raise SystemExit(main())

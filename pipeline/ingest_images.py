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

Sources:
- folder: scanned recursively; every file is accounted for (kept, or rejected with its reason) and
  recognised by content, not by name. Captions come from HF-imagefolder style `metadata.jsonl` /
  `metadata.csv` files (`file_name` relative to the metadata file's folder).
- hf_dataset: `datasets.load_from_disk`; each image's original bytes are exported to
  `data/images/files/<id><ext>` so that the manifest points at local files.
- urls: a text file with one URL per line (# comments allowed) or JSONL with url + caption;
  images are downloaded to `data/images/files/<id><ext>` with `pipeline.download`.

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
import csv
import dataclasses
import functools
import hashlib
import json
import logging
import os
import stat
import sys
import time
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from pipeline import atomic
from pipeline.config import ConfigError, load_config, to_dict
from pipeline.image_checks import (
    EXTENSIONS,
    HEADER_BYTES,
    Accepted,
    CheckSettings,
    IsolatingPool,
    check_image,
    sniff_format,
)
from pipeline.manifest import IMAGE_COLUMNS, read_rows, stable_id, write_rows
from pipeline.ranks import RankInfo, rank_info

log = logging.getLogger("ingest_images")

REJECT_COLUMNS = ("id", "path", "source", "reason", "detail")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # Hugging Face imagefolder convention


@dataclass
class ImageSource:
    kind: Literal["folder", "hf_dataset", "urls"]
    path: str
    name: str = ""
    image_column: str = "image"
    caption_column: str = "caption"
    url_column: str = "url"
    split: str | None = None
    id_column: str | None = None

    def __post_init__(self):
        if not self.path:
            raise ValueError("a source needs a path")


@dataclass
class DownloadSettings:
    timeout_s: float = 30.0
    retries: int = 3
    max_bytes: int = 64 << 20
    backoff_s: float = 1.0
    total_timeout_s: float | None = 300.0


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


# ---------------------------------------------------------------- sources -> items (main process)

@dataclass(frozen=True)
class Item:
    """One thing to ingest. Every field feeds its chunk's fingerprint: a changed file redoes the chunk."""

    id: str
    kind: str
    source: str  # provenance written to the manifest
    path: str  # folder: the file itself; hf_dataset / urls: "" (exported or downloaded when processed)
    origin: str  # what to name in rejects before a local file exists (URL, dataset#row, list:line)
    caption: str = ""
    stamp: str = ""  # folder: size and mtime of the file
    hf: tuple[str, str | None, str, int] | None = None  # (dataset dir, split, image column, row)
    pre_reject: tuple[str, str] | None = None  # decided while listing (links, bad lines, duplicates)


def list_items(sources: Sequence[ImageSource], resolve: Callable[[str], Path]) -> list[Item]:
    """Every item of every source, in source order then source-relative name; ids made unique."""
    items: list[Item] = []
    for src in sources:
        path = resolve(src.path)
        lister = {"folder": _list_folder, "hf_dataset": _list_hf_dataset, "urls": _list_urls}[src.kind]
        found = lister(src, path)
        log.info("source %s %s: %d item(s)", src.kind, path, len(found))
        items += found
    seen: dict[str, str] = {}
    for i, it in enumerate(items):
        if it.id in seen:
            items[i] = dataclasses.replace(it, pre_reject=("duplicate_id", (
                f"{it.origin}: same id as {seen[it.id]} (a name seen twice; give sources distinct `name`s)")))
        else:
            seen[it.id] = it.origin
    return items


def _key(src: ImageSource, rel: str) -> str:
    return stable_id("img", f"{src.name}/{rel}" if src.name else rel)


def _list_folder(src: ImageSource, root: Path) -> list[Item]:
    if not root.is_dir():
        raise ConfigError(f"ingest_images source {src.kind}: folder not found: {root}")
    root = Path(os.path.abspath(root))
    real_root = os.path.realpath(root)
    captions: dict[str, str] = {}
    found: list[tuple[str, str, tuple[str, str] | None, str]] = []  # rel, path, pre_reject, stamp
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=errors.append):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if os.path.islink(p):  # os.walk does not descend into links: loops and double counting
                found.append((_rel(p, root), p, ("symlink_to_directory",
                              f"{p}: a link to a directory, which is not followed"), ""))
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if fn in METADATA_FILES:
                _read_metadata(Path(p), root, src.caption_column, captions)
                continue
            found.append((_rel(p, root), p, *_inspect_file(p, real_root)))
    for e in errors:
        found.append((_rel(str(e.filename), root), str(e.filename), ("unreadable_directory", f"{e}"), ""))
    found.sort(key=lambda t: t[0])
    return [Item(id=_key(src, rel), kind="folder", source=f"folder:{root}", path=p, origin=p,
                 caption=captions.get(rel, ""), stamp=stamp, pre_reject=pre) for rel, p, pre, stamp in found]


def _rel(p: str, root: Path) -> str:
    return Path(os.path.relpath(p, root)).as_posix()


def _inspect_file(p: str, real_root: str) -> tuple[tuple[str, str] | None, str]:
    """(pre-reject or None, stamp) for a listed file, without opening it (a FIFO would block)."""
    if os.path.islink(p):
        target = os.path.realpath(p)
        if not os.path.exists(target):
            return ("broken_symlink", f"{p}: link to {target}, which does not exist"), ""
        if os.path.isfile(target) and os.path.commonpath([target, real_root]) == real_root:
            return ("symlink_duplicate", f"{p}: link to {target}, which is ingested under its own name"), ""
    try:
        st = os.stat(p)
    except OSError as e:
        return ("unreadable", f"{p}: {e}"), ""
    if not stat.S_ISREG(st.st_mode):
        return ("not_a_regular_file", f"{p}: not a regular file (device, FIFO or socket)"), ""
    return None, f"{st.st_size}:{st.st_mtime_ns}"


def _read_metadata(meta: Path, root: Path, caption_key: str, captions: dict[str, str]) -> None:
    """Captions from an imagefolder metadata file; `file_name` is relative to the file's own folder."""
    try:
        text = meta.read_text(encoding="utf-8")
        if meta.suffix == ".csv":
            records = [(i + 2, r) for i, r in enumerate(csv.DictReader(text.splitlines()))]
        else:
            records = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        log.warning("%s:%d: not JSON (%s); line ignored", meta, n, e)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        log.warning("%s: unreadable metadata file (%s); its captions are ignored", meta, e)
        return
    bad = 0
    for _n, rec in records:
        name = rec.get("file_name") if isinstance(rec, dict) else None
        cap = rec.get(caption_key) if isinstance(rec, dict) else None
        if not isinstance(name, str) or not name:
            bad += 1
            continue
        rel = _rel(os.path.normpath(os.path.join(meta.parent, name)), root)
        if isinstance(cap, str) and cap.strip():
            captions[rel] = cap.strip()
    if bad:
        log.warning("%s: %d record(s) without a file_name ignored", meta, bad)


def _open_hf(path: str, split: str | None, *, select: Sequence[str] | None = None):
    from datasets import DatasetDict, load_from_disk

    try:
        obj = load_from_disk(path)
    except Exception as e:  # datasets raises FileNotFoundError / ValueError for non-dataset folders
        raise ConfigError(f"ingest_images source hf_dataset: cannot load {path} ({e})") from e
    if isinstance(obj, DatasetDict):
        if split is None and len(obj) == 1:
            split = next(iter(obj))
        if split not in obj:
            raise ConfigError(f"ingest_images source hf_dataset {path}: set `split` to one of {sorted(obj)}")
        obj = obj[split]
    elif split is not None:
        raise ConfigError(f"ingest_images source hf_dataset {path}: `split: {split}` given but the dataset "
                          "has no splits")
    return obj.select_columns(list(select)) if select else obj


@functools.lru_cache(maxsize=4)
def _hf_images(path: str, split: str | None, column: str):
    """The dataset reduced to its image column, with images left as stored bytes (cached per worker)."""
    from datasets import Image as HFImage

    ds = _open_hf(path, split, select=[column])
    if isinstance(ds.features[column], HFImage):
        ds = ds.cast_column(column, HFImage(decode=False))  # only flips the decode flag; no rewrite
    return ds


def _list_hf_dataset(src: ImageSource, path: Path) -> list[Item]:
    ds = _open_hf(str(path), src.split)
    cols = ds.column_names
    for role, col in (("image_column", src.image_column), ("id_column", src.id_column)):
        if col is not None and col not in cols:
            raise ConfigError(f"ingest_images source hf_dataset {path}: {role} {col!r} not among {cols}")
    n = len(ds)
    if src.caption_column in cols:
        caps = ["" if c is None else str(c).strip() for c in ds[src.caption_column]]
    else:
        log.info("%s: no caption column %r; captions left empty", path, src.caption_column)
        caps = [""] * n
    names = [str(v) for v in ds[src.id_column]] if src.id_column else [f"{i:09d}" for i in range(n)]
    prefix = f"{src.split}/" if src.split else ""
    return [Item(id=_key(src, prefix + names[i]), kind="hf_dataset", source=f"hf_dataset:{path}",
                 path="", origin=f"{path}#{prefix}{names[i]}", caption=caps[i],
                 hf=(str(path), src.split, src.image_column, i)) for i in range(n)]


def _list_urls(src: ImageSource, path: Path) -> list[Item]:
    if not path.is_file():
        raise ConfigError(f"ingest_images source urls: URL list not found: {path}")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")), "")
    jsonl = path.suffix.lower() in (".jsonl", ".json") or first.startswith("{")
    items = []
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = f"{path}:{n}"
        url, cap, problem = s, "", None
        if jsonl:
            try:
                rec = json.loads(s)
            except json.JSONDecodeError as e:
                rec, problem = {}, f"{where}: not JSON ({e})"
            url = rec.get(src.url_column) if isinstance(rec, dict) else None
            cap = rec.get(src.caption_column) if isinstance(rec, dict) else None
            cap = "" if cap is None else str(cap).strip()
            if problem is None and not isinstance(url, str):
                problem = f"{where}: no string {src.url_column!r} field"
        if problem is None and urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
            problem = f"{where}: {url!r} is not an http(s) URL"
        if problem is not None:
            items.append(Item(id=_key(src, where), kind="urls", source=f"urls:{path}", path="", origin=where,
                              pre_reject=("bad_url_line", problem)))
        else:
            items.append(Item(id=_key(src, url), kind="urls", source=url, path="", origin=url, caption=cap))
    return items


def export_or_download(item: Item, files_dir: Path, dl: DownloadSettings) -> Path | tuple[str, str]:
    """The local file to check: the folder's file, or the exported / downloaded copy in files_dir."""
    if item.kind == "folder":
        return Path(item.path)
    if item.kind == "urls":
        from pipeline.download import DownloadError, download

        ext = os.path.splitext(urllib.parse.urlsplit(item.origin).path)[1].lower()
        dest = files_dir / f"{item.id}{ext if ext in _KNOWN_EXTS else ''}"
        try:
            return download(item.origin, dest, timeout_s=dl.timeout_s, retries=dl.retries,
                            max_bytes=dl.max_bytes, backoff_s=dl.backoff_s,
                            total_timeout_s=dl.total_timeout_s)
        except DownloadError as e:
            return "download_failed", str(e)
    data = _hf_image_bytes(item)
    if isinstance(data, tuple):
        return data
    fmt = sniff_format(data[:HEADER_BYTES])
    dest = files_dir / f"{item.id}{EXTENSIONS.get(fmt, '.bin')}"
    if not (dest.is_file() and dest.stat().st_size == len(data)):
        atomic.write_bytes(dest, data)  # original bytes: the check below sees exactly what was stored
    return dest


_KNOWN_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".jp2"}


def _hf_image_bytes(item: Item) -> bytes | tuple[str, str]:
    dataset, split, column, row = item.hf
    value = _hf_images(dataset, split, column)[row][column]
    data, ref = None, None
    if isinstance(value, dict):
        data, ref = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        data = bytes(value)
    elif isinstance(value, str):
        ref = value
    if data is None and ref:
        ref_path = Path(ref) if os.path.isabs(ref) else Path(dataset) / ref
        try:
            data = ref_path.read_bytes()
        except OSError as e:
            return "missing_image", f"{item.origin}: image stored by path {ref}, which cannot be read ({e})"
    if not data:
        return "missing_image", f"{item.origin}: no image in column {column!r} ({type(value).__name__})"
    return data


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

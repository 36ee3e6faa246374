"""Where stage 10's images come from: listing each source into items, and turning an item into a local file.

Used by `pipeline.curation.ingest_images` (the stage: chunking, checking, resume and merge live there). Listing runs
once in the main process; `export_or_download` runs per item inside the decode pool's workers.

Sources (config `ingest_images.sources`, one `ImageSource` each):
- folder: scanned recursively; every file is accounted for (kept, or rejected with its reason) and
  recognised by content, not by name. Captions come from HF-imagefolder style `metadata.jsonl` /
  `metadata.csv` files (`file_name` relative to the metadata file's folder). Links to directories are not
  followed (loops, double counting) and links to files already inside the folder are rejected as
  duplicates. No file is opened while listing (only stat'ed), so a FIFO cannot block the scan.
- hf_dataset: `datasets.load_from_disk` (a DatasetDict needs `split` unless it has exactly one); each
  image's original bytes are exported to `data/images/files/<id><ext>`, the extension taken from the
  bytes' sniffed format, so that the manifest points at local files. Images stored by path are read
  relative to the dataset folder.
- urls: a text file with one URL per line (# comments allowed) or JSONL with url + caption;
  images are downloaded to `data/images/files/<id><ext>` with `pipeline.curation.download`. A malformed line
  becomes a `bad_url_line` reject instead of stopping the listing.

Ids are `stable_id` of the source-relative name (prefixed by the source's `name` when set); an id seen
twice is rejected as `duplicate_id` rather than silently overwriting the first. Every `Item` field feeds
its chunk's fingerprint, so a changed file, caption or URL redoes the chunk holding it.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline import atomic
from pipeline.config import ConfigError
from pipeline.curation.chunked import DownloadSettings  # the ingest stages' one download-settings class
from pipeline.curation.image_checks import EXTENSIONS, HEADER_BYTES, sniff_format
from pipeline.formats.manifest import stable_id

log = logging.getLogger("ingest_images")  # the stage's logger: one name for everything stage 10 says

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


# ---------------------------------------------------------------- item -> local file (runs in the pool)

def export_or_download(item: Item, files_dir: Path, dl: DownloadSettings) -> Path | tuple[str, str]:
    """The local file to check: the folder's file, or the exported / downloaded copy in files_dir."""
    if item.kind == "folder":
        return Path(item.path)
    if item.kind == "urls":
        from pipeline.curation.download import DownloadError, download

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

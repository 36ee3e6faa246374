"""Token shards: the format between the tokenisation stage and the trainer / sampler / evaluator.

A token set is a folder:

    meta.json                  grid (f, h, w), vocab_size, downsample, vqgan_sha256
    shard-R003-00012.npy       int16 codes [n, f, h, w], C order, memory-mapped on read
    shard-R003-00012.parquet   the shard's rows: id, row, caption, source, crop box, vqgan_sha256
    shard-R003-00012.done      marker (JSON: rows, sha256 of the .npy), written last
    index.parquet              merged index of every finished shard (rank 0, after all ranks)

`R003` is the writing rank, `00012` the shard number within that rank's work. Every file is
written under a temporary name and renamed (pipeline.atomic), and a shard counts only when its
marker exists, so a killed run leaves nothing that a reader could mistake for data.

Codes are int16 (16384 codes fit; a codebook larger than 32768 is refused) to halve the disk and
page-cache footprint of uint16-free readers; the reader widens them to int64.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import atomic
from pipeline.errors import PipelineError

INDEX_COLUMNS = ("id", "shard", "row", "caption", "source", "crop", "vqgan_sha256")
MAX_VOCAB = 32768


class ShardError(PipelineError, RuntimeError):
    """A token set that is missing, truncated or inconsistent; the message names the file."""


@dataclass(frozen=True)
class TokenSetMeta:
    grid: tuple[int, int, int]  # (f, h, w) codes per item
    vocab_size: int
    downsample: int
    vqgan_sha256: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> TokenSetMeta:
        return cls(grid=tuple(d["grid"]), vocab_size=int(d["vocab_size"]), downsample=int(d["downsample"]),
                   vqgan_sha256=str(d["vqgan_sha256"]))


def shard_name(rank: int, index: int) -> str:
    return f"shard-R{rank:03d}-{index:05d}"


def write_meta(folder: Path, meta: TokenSetMeta) -> None:
    write_meta_once(folder, meta, meta.to_json(), read_meta, "token set")


def read_meta(folder: Path) -> TokenSetMeta:
    return read_meta_file(folder, TokenSetMeta.from_json, "token set", "tokenisation has not run")


def write_meta_once(folder: Path, meta, as_json: dict, read, what: str) -> None:
    """Write `folder`/meta.json, or check that the one there says the same (`read` parses it); `meta` has a
    vocab_size, which int16 codes must hold. Shared by token sets and code canvases."""
    if meta.vocab_size > MAX_VOCAB:
        raise ShardError(f"{folder}: vocab_size {meta.vocab_size} does not fit int16 codes")
    path = Path(folder) / "meta.json"
    if path.exists():
        old = read(folder)
        if old != meta:
            raise ShardError(f"{path}: existing {what} was made with {old}, this run has {meta}; "
                             "use a new folder or delete the old one")
        return
    atomic.write_json(path, as_json)


def read_meta_file(folder: Path, parse, what: str, missing: str):
    """`parse` of `folder`/meta.json; errors name the file (`missing`: why it may not be there)."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise ShardError(f"{path}: missing (not a {what}, or {missing})")
    try:
        return parse(atomic.read_json(path))
    except (KeyError, ValueError, TypeError) as e:
        raise ShardError(f"{path}: malformed {what} metadata ({e})") from e


def write_shard(folder: Path, name: str, codes: np.ndarray, rows: Sequence[dict], meta: TokenSetMeta) -> None:
    """Write one complete shard: codes [n, f, h, w], one row dict per item, then the marker.

    Each row needs: id, caption (str, may be ""), source, crop (list of 4 ints or []).
    """
    folder = Path(folder)
    codes = np.asarray(codes)
    if codes.ndim != 4 or tuple(codes.shape[1:]) != tuple(meta.grid):
        raise ShardError(f"{folder / name}: codes of shape {codes.shape}, token set grid is {meta.grid}")
    if len(rows) != codes.shape[0]:
        raise ShardError(f"{folder / name}: {codes.shape[0]} code grids but {len(rows)} rows")
    if codes.size and (codes.min() < 0 or codes.max() >= meta.vocab_size):
        raise ShardError(f"{folder / name}: codes outside [0, {meta.vocab_size})")
    codes16 = np.ascontiguousarray(codes, dtype=np.int16)
    npy = folder / f"{name}.npy"
    with atomic.atomic_path(npy) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, codes16)
    table = pa.table({
        "id": [str(r["id"]) for r in rows],
        "shard": [name] * len(rows),
        "row": list(range(len(rows))),
        "caption": [str(r.get("caption") or "") for r in rows],
        "source": [str(r.get("source") or "") for r in rows],
        "crop": [list(map(int, r.get("crop") or [])) for r in rows],
        "vqgan_sha256": [meta.vqgan_sha256] * len(rows),
    })
    with atomic.atomic_path(folder / f"{name}.parquet") as tmp:
        pq.write_table(table, tmp)
    atomic.mark_done(folder / f"{name}.done", {"rows": len(rows), "npy_sha256": atomic.sha256_file(npy)})


def shard_done(folder: Path, name: str) -> bool:
    return atomic.is_done(Path(folder) / f"{name}.done")


def merge_index(folder: Path) -> int:
    """Join every finished shard's rows into index.parquet (sorted by shard name); returns rows."""
    folder = Path(folder)
    tables = []
    for marker in sorted(folder.glob("shard-*.done")):
        part = marker.with_suffix(".parquet")
        if not part.is_file():
            raise ShardError(f"{part}: shard marked done but its index is missing")
        tables.append(pq.read_table(part))
    if not tables:
        raise ShardError(f"{folder}: no finished shards to merge")
    table = pa.concat_tables(tables)
    ids = table.column("id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ShardError(f"{folder}: duplicate ids across shards, e.g. {dup}")
    with atomic.atomic_path(folder / "index.parquet") as tmp:
        pq.write_table(table, tmp)
    return table.num_rows


class TokenSet:
    """Random access to a finished token set: `ts[i] -> (codes int64 [f, h, w], caption, id)`.

    Shards are memory-mapped lazily, so opening a set of any size costs only its index.
    Every shard's size is checked against its index when first touched; a truncated or missing
    file is a ShardError naming it, never a crash deep inside numpy.
    """

    def __init__(self, folder: str | Path, split_ids: set[str] | None = None):
        self.folder = Path(folder)
        self.meta = read_meta(self.folder)
        index = self.folder / "index.parquet"
        if not index.is_file():
            raise ShardError(f"{index}: missing (the tokenisation stage's merge step has not run)")
        try:
            table = pq.read_table(index)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise ShardError(f"{index}: unreadable Parquet ({e})") from e
        cols = table.to_pydict()
        keep = range(table.num_rows) if split_ids is None else [
            i for i, x in enumerate(cols["id"]) if x in split_ids]
        self.ids = [cols["id"][i] for i in keep]
        self.shards = [cols["shard"][i] for i in keep]
        self.rows = [int(cols["row"][i]) for i in keep]
        self.captions = [cols["caption"][i] for i in keep]
        self._maps: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def _shard(self, name: str) -> np.ndarray:
        arr = self._maps.get(name)
        if arr is None:
            path = self.folder / f"{name}.npy"
            if not path.is_file():
                raise ShardError(f"{path}: listed in index.parquet but missing")
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError, EOFError) as e:
                raise ShardError(f"{path}: truncated or not a .npy file ({e})") from e
            if arr.ndim != 4 or tuple(arr.shape[1:]) != self.meta.grid:
                raise ShardError(f"{path}: shape {arr.shape} does not match grid {self.meta.grid}")
            self._maps[name] = arr
        return arr

    def codes(self, i: int) -> np.ndarray:
        name, row = self.shards[i], self.rows[i]
        arr = self._shard(name)
        if row >= arr.shape[0]:
            raise ShardError(f"{self.folder / name}.npy: row {row} missing (file holds {arr.shape[0]})")
        out = np.asarray(arr[row], dtype=np.int64)
        if out.min() < 0 or out.max() >= self.meta.vocab_size:
            raise ShardError(f"{self.folder / name}.npy row {row} (id {self.ids[i]}): token ids outside the "
                             f"codebook [0, {self.meta.vocab_size})")
        return out

    def __getitem__(self, i: int) -> tuple[np.ndarray, str, str]:
        return self.codes(i), self.captions[i], self.ids[i]

    def describe(self) -> str:
        return json.dumps({"folder": str(self.folder), "items": len(self), **self.meta.to_json()})

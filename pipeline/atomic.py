"""Crash-safe file writing: nothing is ever half-written.

Every output is written under a temporary name in the same folder and renamed into place
(`os.replace` is atomic on POSIX), so a reader sees either the old complete file or the new
complete file. A "done" marker is written last; a stage treats a unit of work as finished only
when its marker exists (the img2dataset convention).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import writing


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `final`; on success rename it to `final`, else delete it.

    A write that fails for a full disk, a read-only folder or the like raises
    `pipeline.errors.WriteError` naming `final` and the cause (told before the temporary is deleted,
    while the space it took still shows the disk full)."""
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        with writing(final):
            yield tmp
            fsync_path(tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
            os.replace(tmp, final)
        fsync_path(final.parent, best_effort=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(final: str | os.PathLike, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_text(final: str | os.PathLike, text: str) -> None:
    write_bytes(final, text.encode())


def write_json(final: str | os.PathLike, obj: Any) -> None:
    write_text(final, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def mark_done(marker: str | os.PathLike, stats: dict[str, Any] | None = None) -> None:
    """Write the done-marker (last, after every output it vouches for)."""
    write_json(marker, stats or {})


def is_done(marker: str | os.PathLike) -> bool:
    return Path(marker).is_file()


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries left by a killed run (they are never valid outputs)."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike, *, best_effort: bool = False) -> None:
    """Flush a file's or folder's data to disk.

    A path that cannot be opened is skipped (nothing of ours to make durable there). With
    `best_effort`, a failing fsync is ignored too: used for folders, which some file systems
    refuse to fsync, so that making a rename durable never fails the write it follows.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not best_effort:
            raise
    finally:
        os.close(fd)

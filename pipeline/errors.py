"""How every stage fails: one readable line that names the file or folder and the cause, and an exit status.

Exit statuses of every entry point (and so of every `stages/NN_*.sh`):

    0   done
    1   an error the user can fix (bad config or input, unwritable or full output folder, a failed
        save, ...): one line on stderr saying what and where, no traceback
    2   wrong command line (argparse)
    75  stopped before the end and resumable (EX_TEMPFAIL): the trainer after SIGTERM / SIGINT or
        `--stop-after-steps`; run the stage again to continue. `run.sh` stops a stage range there.
    130 interrupted by Ctrl-C outside the trainer (finished work is kept; a re-run continues)

Anything else (a traceback) is a bug in the pipeline.

The pieces, used everywhere instead of a try/except per stage:
- `PipelineError`: the base of every error a user can fix (ConfigError, ShardError, CheckpointError, ...).
- `writing(path)`: around code that writes `path`; turns a failure into a `WriteError` whose message
  says why, also where the writer gives no errno (torch.save reports a full disk as "unexpected pos
  576 vs 534", numpy as "100000 requested and 8176 written"): then the folder is looked at
  (`os.statvfs`) for a read-only file system or a full disk, and a short write on a disk that has
  room again (a peer rank removed its part of the same checkpoint first) still reads as a full disk.
  `pipeline.atomic.atomic_path` uses it, so every atomic output has it.
- `entry_point`: the decorator on each stage's `main`; turns the errors above, and plain OSError
  with an errno, into the one line (`pipeline.tokens.tokenize: error: no space left on device: PATH
  (0 bytes free there)`) on stderr and exit status 1. Started as a program (`python -m`), it also
  binds the process to its launcher (`pipeline.lifeline`), so no orphan outlives a killed stage.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 75, 130

# Below this many free bytes a failed write counts as a full disk (the failed file itself has
# usually filled what was left before it is deleted).
LOW_SPACE_BYTES = 1 << 20


class PipelineError(Exception):
    """An error the user can fix; its message names the file, folder or key, and the cause."""


class WriteError(PipelineError, OSError):
    """Writing a file or folder failed; `errno` is the cause when it is known."""

    def __init__(self, message: str, code: int | None = None, path: str | os.PathLike | None = None):
        OSError.__init__(self, message)
        self.errno, self.filename = code, None if path is None else str(path)

    def __str__(self) -> str:
        return self.args[0]


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_cause(path: str | os.PathLike) -> int | None:
    """EROFS or ENOSPC when the file system holding `path` is read-only or (nearly) full, else None."""
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES or (st.f_files and st.f_favail == 0):
        return errno.ENOSPC
    return None


def free_space(path: str | os.PathLike) -> str:
    try:
        st = os.statvfs(_existing(Path(path)))
    except OSError:
        return "unknown"
    n = st.f_bavail * st.f_frsize
    return f"{n} bytes" if n < 1 << 20 else f"{n / (1 << 20):.0f} MiB"


def write_message(path: str | os.PathLike, code: int | None, detail: str = "") -> str:
    """The line for a failed write of `path` with cause `code` (an errno)."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return f"{what}: {path} ({free_space(path)} free there)"
    if code == errno.EROFS:
        return f"cannot write {path}: read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"cannot write {path}: permission denied"
    return f"cannot write {path}: {detail or (os.strerror(code) if code else 'unknown error')}"


# errnos that only a write gives: whatever file the error names, the write to the target failed.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def write_error(path: str | os.PathLike, exc: BaseException) -> WriteError | None:
    """A WriteError for `exc` raised while writing `path`, or None when `exc` is not that write failing
    (an input that could not be read inside the same block keeps its own error)."""
    if isinstance(exc, WriteError):
        return exc
    code = exc.errno if isinstance(exc, OSError) and exc.errno else None
    if code is not None:
        folder = os.path.dirname(os.path.abspath(path))
        named = exc.filename is None or os.path.abspath(str(exc.filename)).startswith(folder)
        if code not in WRITE_ERRNOS and not named:
            return None
    elif isinstance(exc, (OSError, RuntimeError)):
        code = disk_cause(path)  # torch and numpy report a full disk without an errno
        if code is None and _short_write(exc):
            # The file system took fewer bytes than asked and is not full now: another writer on it (a
            # peer rank cleaning up its part of the same checkpoint) freed space between the failure
            # and this look. A short write to a regular file means a full disk or quota (rarely an I/O error).
            return WriteError(f"no space left on device: {path} (a write came up short; {free_space(path)} "
                              f"free there now, so a full disk that has since been freed, or a quota)",
                              errno.ENOSPC, path)
        if code is None and not isinstance(exc, OSError) and not _looks_like_io(exc):
            return None  # a RuntimeError of the computation, not of the write
    else:
        return None
    return WriteError(write_message(path, code, str(exc)), code, path)


def _short_write(exc: BaseException) -> bool:
    """torch's and numpy's words for a write that stored fewer bytes than it was given."""
    text = str(exc)
    return "unexpected pos" in text or "file write failed" in text or re.search(r"\d+ requested and \d+ written",
                                                                                 text) is not None


def _looks_like_io(exc: BaseException) -> bool:
    """torch's words for a failed write of any kind (a short write among them)."""
    text = str(exc)
    return _short_write(exc) or any(s in text for s in ("inline_container", "PytorchStreamWriter", "iostream error",
                                                        "open file failed"))


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Failures of the enclosed writes become a WriteError naming `path` and the cause."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = write_error(path, e)
        if err is None or err is e:
            raise
        raise err from e


def describe(exc: BaseException) -> str | None:
    """The one line for an error the user can fix, or None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, PipelineError):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno:
        path = exc.filename
        if path is None:
            return str(exc)
        if exc.errno == errno.ENOENT:
            return f"{path}: no such file or directory"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            return write_message(path, exc.errno)
        return f"{path}: {exc.strerror}"
    pa = sys.modules.get("pyarrow")  # only when loaded: an error cannot come from a library never imported
    if pa is not None and isinstance(exc, pa.ArrowException):
        return f"{type(exc).__name__}: {exc}"
    dist = sys.modules.get("torch.distributed")
    text = str(exc).strip()
    if dist is not None and (isinstance(exc, getattr(dist, "DistError", ())) or (
            isinstance(exc, RuntimeError) and any(s in text for s in PEER_GONE))):
        # A peer that ended (its own error, or killed) breaks the collective this rank was in.
        first = (text.splitlines() or [type(exc).__name__])[0].split(". This is typically")[0]
        return f"a collective with the other ranks failed, most likely because another rank ended (its message " \
               f"says why): {first}"
    return None


# What gloo says when the rank at the other end of a connection has ended.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def exit_status(rc: int, launched: bool) -> int:
    """The status a process exits with, told to the stage script too.

    Under torchrun or the deepspeed launcher a rank must exit 0 after a clean stop (75 would read as a
    crashed rank: the launcher prints a failure report and ends the other ranks), so there the status
    travels through the file named by NUWA_STATUS_FILE (set by stages/common.sh, written by each
    node's local rank 0) and the stage script exits with it."""
    status_file = os.environ.get("NUWA_STATUS_FILE")
    if status_file and os.environ.get("LOCAL_RANK", "0") == "0":
        try:
            Path(status_file).write_text(f"{rc}\n")
        except OSError as e:  # the stage script then reports 0; say why
            logging.getLogger(__name__).warning("could not write the exit status to %s: %s", status_file, e)
    return EXIT_OK if launched and rc == EXIT_STOPPED else rc


def report(prog: str, line: str) -> None:
    """Print the one line, after whatever the logging handlers still hold; ranks of a multi-rank run say
    which rank they are."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""
    sys.stderr.write(f"{rank}{prog}: error: {line}\n")
    sys.stderr.flush()


def _program(fn: Callable) -> str:
    if fn.__module__ != "__main__":
        return fn.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)  # set under `python -m`
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def entry_point(main: Callable[..., int | None] | None = None, *, user_errors: tuple[type[BaseException], ...] = ()):
    """Decorator for a stage's `main(argv)`: errors a user can fix (and `user_errors`) become one line on
    stderr, `PROGRAM: error: WHAT`, and exit status 1; Ctrl-C becomes 130. Run as a program
    (`python -m`), the process is also bound to its launcher (pipeline.lifeline)."""
    def wrap(fn: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(fn)
        def run(*args, **kwargs) -> int:
            if fn.__module__ == "__main__":
                from pipeline import lifeline

                lifeline.bind()
            try:
                rc = fn(*args, **kwargs)
            except KeyboardInterrupt:
                report(_program(fn), "interrupted (finished work is kept; run the stage again to continue)")
                return EXIT_INTERRUPTED
            except BaseException as e:
                line = describe(e) if not isinstance(e, user_errors) else str(e)
                if line is None:
                    raise
                report(_program(fn), line)
                return EXIT_ERROR
            return EXIT_OK if rc is None else rc
        return run

    return wrap(main) if main is not None else wrap

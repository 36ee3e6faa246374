"""A stage's processes end when whatever started them is gone, so that no orphan keeps writing.

torchrun starts every rank in a new session, so killing a stage's process group (a scheduler's
cancel, a `kill -- -PGID`) used to leave its training ranks running: they went on saving
checkpoints into the folder that a restarted run was using. `bind()`, called by every entry point
started as a program (`pipeline.errors.entry_point`), ties the process to two things:

- its parent (the launcher: torchrun, the deepspeed launcher, or the stage's shell): on Linux the
  kernel sends SIGKILL the moment the parent exits (`prctl(PR_SET_PDEATHSIG)`); elsewhere, and as a
  fallback, a watcher thread notices within a second that the process has been re-parented;
- the stage script named by NUWA_STAGE_PID (`host:pid`, exported by stages/common.sh): when that
  shell is gone while a launcher between it and this rank lives on, the watcher ends the rank too.
  Ranks on other hosts (a multi-node launcher) ignore it.

The process then ends at once (SIGKILL), not after a clean save: the stage was killed on purpose
and a new run may already be writing the same folders. Every output is crash-safe (temporary name,
rename, done-markers, a checkpoint counts only once its marker and `latest` are written), so
stopping anywhere loses at most the unfinished unit of work.

Caveat (Linux): the parent-death signal follows the parent *thread* that started the process. A
launcher that starts ranks from a short-lived thread would end them early; `NUWA_LIFELINE=0` turns
binding off for such a launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 1.0
_bound = False


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) from /proc, or '' where /proc has none; None if
    the process does not exist. Two processes with one pid never share a start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        return stat.rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        pass
    except (OSError, IndexError):
        return ""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def stage_pid() -> int | None:
    """The stage script's pid from NUWA_STAGE_PID when it names this host, else None."""
    value = os.environ.get("NUWA_STAGE_PID", "")
    host, _, pid = value.rpartition(":")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    return int(pid)


def _end(why: str) -> None:
    try:
        sys.stderr.write(f"[pid {os.getpid()}] {why}; ending this process so that no orphan keeps writing\n")
        sys.stderr.flush()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int, stage: int | None, stage_started: str | None) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent:
            _end(f"the launcher (pid {parent}) is gone")
        if stage is not None and _start_time(stage) != stage_started:
            _end(f"the stage script (pid {stage}) is gone")


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def bind(parent: int | None = None) -> None:
    """End this process when its parent or its stage script is gone (idempotent). `parent`: the pid the
    parent must have (a worker pool's process passes its stage's), else whatever the parent is now."""
    global _bound
    if _bound or os.environ.get("NUWA_LIFELINE", "1") == "0":
        return
    _bound = True
    if parent is None:
        parent = os.getppid()  # read before arming the signal: a parent that dies in between is seen by the watcher
    _set_parent_death_signal()
    if os.getppid() != parent:
        _end(f"the launcher (pid {parent}) is gone")
    stage = stage_pid()
    stage_started = _start_time(stage) if stage is not None else None
    if stage is not None and stage_started is None:
        _end(f"the stage script (pid {stage}) is gone")
    threading.Thread(target=_watch, args=(parent, stage, stage_started), name="lifeline", daemon=True).start()

"""Run a stage with an output folder that is read-only or nearly full, the way a user's disk would be.

Tests run as root here, so `chmod` does not stop a write. Instead the command runs in its own mount
namespace (`unshare --mount`): a folder is bind-mounted read-only over itself (EROFS), or a small
tmpfs is mounted on it (ENOSPC once it is full). Nothing outside the command sees either mount, and
both vanish with it; what the stage left in a small tmpfs is copied out afterwards for the test to
look at. Where the sandbox forbids mount namespaces the tests that need them are skipped.
"""

from __future__ import annotations

import functools
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def mount_namespaces() -> str | None:
    """None when a private mount namespace with a tmpfs works here, else why not."""
    with tempfile.TemporaryDirectory() as d:
        try:
            done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   f"mount -t tmpfs -o size=4k tmpfs {d} && touch {d}/x"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return str(e)
        return None if done.returncode == 0 else done.stderr.strip() or f"exit status {done.returncode}"


needs_mounts = pytest.mark.skipif(mount_namespaces() is not None,
                                  reason=f"no private mount namespaces here: {mount_namespaces()}")


def stage_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"))
    env.update(extra)
    return env


def run_stage(cmd: list[str], *, read_only: tuple[Path, ...] = (), full: tuple[Path, ...] = (), full_kib: int = 64,
              keep: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` (from the repository root) with each `read_only` folder read-only and each `full` folder on a
    `full_kib` KiB tmpfs. With `keep`, what is left in the `full` folders is copied there (one sub-folder
    each, by position) after the command ends."""
    script = ["set -e"]
    for d in read_only:
        script.append(f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}"')
    for d in full:
        script.append(f'mount -t tmpfs -o size={full_kib}k tmpfs "{d}"')
    script.append('rc=0; "$@" || rc=$?')
    if keep is not None:
        for i, d in enumerate(full):
            script.append(f'mkdir -p "{keep}/{i}" && cp -a "{d}/." "{keep}/{i}/"')
    script.append('exit "$rc"')
    for d in (*read_only, *full):
        Path(d).mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh",
                           *[str(c) for c in cmd]], cwd=ROOT, env=stage_env(), capture_output=True, text=True,
                          timeout=timeout)


def stage(number: str, config: Path, *args: str) -> list[str]:
    """The command line of stages/<number>_*.sh for `config`."""
    [script] = sorted((ROOT / "stages").glob(f"{number}_*.sh"))
    return ["bash", str(script), "--config", str(config), *args]


def error_lines(out: str) -> list[str]:
    """The lines of a stage's output that report an error (there must be exactly one, and no traceback)."""
    assert "Traceback" not in out, out[-4000:]
    return [line for line in out.splitlines() if "ERROR" in line or "error:" in line.lower()]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())

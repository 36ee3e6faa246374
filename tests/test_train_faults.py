"""What a cluster run meets around the trainer, through the stage scripts with two ranks (torchrun, gloo, real
DeepSpeed): a killed stage leaves no rank behind and a restart resumes from a consistent `latest`; a second
run on the same checkpoint folder fails at once naming the holder; SIGTERM stops the run resumably, exit
status 75, and `run.sh` stops its stage range there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.training.checkpoint import step_of
from tests.faults import ROOT, stage, stage_env
from tests.test_train_data import make_token_set
from tests.test_train_deepspeed import finish, latest, train_cmd, write_config

pytestmark = pytest.mark.slow


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """`cmd` as the leader of its own process group (what a scheduler or a terminal would kill)."""
    return subprocess.Popen(cmd, cwd=ROOT, env=stage_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while latest(run) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no checkpoint appeared:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return latest(run)


def ranks_of(config: Path) -> dict[int, int]:
    """{pid: session id} of every live trainer process of `config` (the launcher's included)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"pipeline.training.train" in cmd and str(config).encode() in cmd and stat[0] != "Z":
            found[int(entry.name)] = int(stat[3])
    return found


def test_a_killed_stage_leaves_no_rank_and_one_run_per_folder(tmp_path):
    data = make_token_set(tmp_path / "data", n=16)
    run = tmp_path / "run"
    config = write_config(run, data, micro_batch=2, save_every=4, epochs=100, nproc_per_node=2)
    log = tmp_path / "stage.txt"
    proc = start(stage("60", config), log)
    wait_for_checkpoint(run, proc, log)

    # A second run on the same folder fails at once, naming the one that holds it.
    t0 = time.monotonic()
    second = subprocess.run(train_cmd(config), cwd=ROOT, env=stage_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 1, second.stderr[-3000:]
    assert "another training run is using this checkpoint folder (held by pid " in second.stderr
    assert f"config {config}, 2 rank(s)" in second.stderr and "Traceback" not in second.stderr
    assert time.monotonic() - t0 < 60

    # Kill the stage's process group, as a scheduler would. torchrun started the ranks in a session of
    # their own, so the group does not reach them: they must end by themselves.
    workers = {pid for pid, sid in ranks_of(config).items() if sid != proc.pid}
    assert len(workers) == 2, ranks_of(config)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while set(ranks_of(config)) & workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(ranks_of(config)) & workers, f"ranks outlived their stage:\n{log.read_text()[-3000:]}"
    killed_at = latest(run)
    folders = sorted(p.name for p in (run / "train" / "checkpoints").iterdir())
    time.sleep(2)
    assert (latest(run), sorted(p.name for p in (run / "train" / "checkpoints").iterdir())) == (killed_at, folders)

    # A restart resumes from the consistent `latest`, and a clean stop under torchrun still exits 75.
    stop = step_of(killed_at) + 4
    log2 = tmp_path / "restart.txt"
    rc, out = finish(start(stage("60", config, "--stop-after-steps", str(stop)), log2), log2, 300)
    assert rc == 75, out[-4000:]
    assert f"starting from checkpoint {killed_at} (optimizer step {step_of(killed_at)}" in out
    assert f"stopped, resumable: --stop-after-steps {stop} at optimizer step {stop}" in out
    assert latest(run) == f"global_step{stop}"


def test_sigterm_stops_the_range_resumably(tmp_path):
    data = make_token_set(tmp_path / "data", n=16)
    run = tmp_path / "run"
    config = write_config(run, data, micro_batch=2, save_every=4, epochs=100, nproc_per_node=2)
    log = tmp_path / "range.txt"
    proc = start([str(ROOT / "run.sh"), "stages", "60-70", "--config", str(config)], log)
    wait_for_checkpoint(run, proc, log)
    os.killpg(proc.pid, signal.SIGTERM)  # run.sh, the stage script and torchrun (which tells the ranks)
    rc, out = finish(proc, log, 120)
    assert rc == 75, out[-4000:]
    assert "stopped, resumable: signal SIGTERM at optimizer step" in out
    assert "stage 60_train.sh stopped before the end" in out and "(resumable, exit status 75)" in out
    assert "stage 70_sample.sh" not in out
    meta = run / "train" / "checkpoints" / latest(run) / "train_meta.json"
    assert meta.is_file() and not (run / "train" / "export").exists()

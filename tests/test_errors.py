"""pipeline.errors on its own: which failures become the one line, what it says, and the exit statuses
(the stages' use of it, with real full and read-only disks, is in test_stage_errors.py)."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch

from pipeline import errors
from pipeline.config import ConfigError


def test_a_write_to_a_full_device_names_the_file_and_the_cause():
    with pytest.raises(errors.WriteError) as e, errors.writing("/dev/full"), open("/dev/full", "wb") as f:
        f.write(b"x" * 100_000)
        f.flush()
    assert str(e.value).startswith("no space left on device: /dev/full (") and e.value.errno == errno.ENOSPC
    # torch says it without an errno, and the device's file system is not full: its words for a short write
    # ("unexpected pos") still name the cause
    with pytest.raises(errors.WriteError, match=r"no space left on device: /dev/full \(a write came up short") as e, \
            errors.writing("/dev/full"):
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(errors.WriteError, match="no space left on device: /dev/full"), \
            errors.writing("/dev/full"), open("/dev/full", "wb") as f:
        np.save(f, np.zeros(100_000))


def test_other_failures_inside_a_write_keep_their_own_error(tmp_path):
    with pytest.raises(FileNotFoundError), errors.writing(tmp_path / "out" / "x.parquet"):
        open(tmp_path.parent / "elsewhere" / "input.txt").read()  # reading an input, not the write
    with pytest.raises(RuntimeError, match="shape mismatch"), errors.writing(tmp_path / "x.pt"):
        raise RuntimeError("shape mismatch")  # the computation, not the disk


def test_describe_is_one_line_for_what_a_user_can_fix_and_none_for_bugs():
    assert errors.describe(ConfigError("run.yaml: train.lr: expected a number")) == \
        "run.yaml: train.lr: expected a number"
    ro = OSError(errno.EROFS, os.strerror(errno.EROFS), "/data/run/samples")
    assert errors.describe(ro) == "cannot write /data/run/samples: read-only file system"
    assert errors.describe(FileNotFoundError(errno.ENOENT, "x", "/data/in.parquet")) == \
        "/data/in.parquet: no such file or directory"
    assert errors.describe(ValueError("a bug")) is None and errors.describe(KeyError("k")) is None


def test_entry_point_exit_statuses(capsys):
    @errors.entry_point
    def fails(argv=None):
        raise ConfigError("run.yaml: unknown section(s) ['trian']")

    @errors.entry_point
    def bug(argv=None):
        raise ValueError("a bug keeps its traceback")

    @errors.entry_point
    def interrupted(argv=None):
        raise KeyboardInterrupt

    assert fails() == errors.EXIT_ERROR
    assert capsys.readouterr().err == f"{__name__}: error: run.yaml: unknown section(s) ['trian']\n"
    with pytest.raises(ValueError, match="a bug"):
        bug()
    assert interrupted() == errors.EXIT_INTERRUPTED


def test_a_stop_under_a_launcher_exits_0_and_reports_75_through_the_status_file(tmp_path, monkeypatch):
    status = tmp_path / "status"
    monkeypatch.setenv("NUWA_STATUS_FILE", str(status))
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert errors.exit_status(errors.EXIT_STOPPED, launched=True) == 0
    assert status.read_text() == "75\n"
    assert errors.exit_status(errors.EXIT_STOPPED, launched=False) == 75
    monkeypatch.setenv("LOCAL_RANK", "1")  # one writer per node
    status.unlink()
    assert errors.exit_status(errors.EXIT_OK, launched=True) == 0 and not status.exists()


def test_every_stage_picks_its_device_the_same_way():
    from pipeline.ranks import pick_device

    assert pick_device("cpu", 3) == torch.device("cpu")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert pick_device("auto", 3) == pick_device("cuda", 3) == torch.device("cuda", 3 % n)
        assert pick_device("cuda:0", 3) == torch.device("cuda", 0)
    else:
        assert pick_device("auto", 3) == torch.device("cpu")
        with pytest.raises(ConfigError, match=r"^sample.device is 'cuda:1' but no CUDA device is available$"):
            pick_device("cuda:1", 0, "sample.device")

"""Image ingest is resumable after SIGKILL, rank-independent, and survives a dying decode worker."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from pipeline.curation import ingest_images
from pipeline.curation.image_checks import IsolatingPool
from pipeline.formats.manifest import read_rows
from tests.test_ingest_images import encode, noise, write_config

ROOT = Path(__file__).resolve().parents[1]


def make_folder(src: Path, n: int, side: int = 160) -> None:
    for i in range(n):
        sub = src / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.jpg").write_bytes(encode(noise(side + i % 7, side, seed=i), "JPEG", quality=95))
    (src / "part0/broken.jpg").write_bytes(b"\xff\xd8\xff")


def section(src: Path, **kw) -> dict:
    return {"sources": [{"kind": "folder", "path": str(src)}], "min_side": 64, "size": 64, "workers": 0,
            "chunk_size": 2, **kw}


def test_sigkill_midway_then_rerun_gives_identical_outputs(tmp_path):
    src = tmp_path / "src"
    n = 40
    make_folder(src, n, side=320)
    ref_cfg = write_config(tmp_path / "ref.yaml", tmp_path / "ref", section(src))
    assert ingest_images.main(["--config", str(ref_cfg)]) == 0
    ref = tmp_path / "ref/data/images"

    cfg = write_config(tmp_path / "run.yaml", tmp_path / "run", section(src, workers=2))
    out = tmp_path / "run/data/images"
    first_marker = out / "chunks/chunk-000000.done"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.Popen(["bash", str(ROOT / "stages/10_ingest_images.sh"), "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not first_marker.exists():
            assert proc.poll() is None, f"stage ended before its first chunk: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, "no chunk finished within 60 s"
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its decode workers, as a node failure would
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_before = sorted(p.name for p in (out / "chunks").glob("*.done"))
    assert 1 <= len(done_before) < -(-(n + 1) // 2), "the kill did not land midway"
    assert not (out / "manifest.parquet").exists()

    # the re-run decodes in-process: the number of workers is not part of what a chunk vouches for
    again = write_config(tmp_path / "again.yaml", tmp_path / "run", section(src, workers=0))
    assert ingest_images.main(["--config", str(again)]) == 0
    redone = sorted(p.name for p in (out / "chunks").glob("*.done"))
    assert len(redone) == -(-(n + 1) // 2) and set(done_before) <= set(redone)
    for name in ("manifest.parquet", "rejects.parquet"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    rows = read_rows(out / "manifest.parquet")
    assert len(rows) == n and len({r["id"] for r in rows}) == n  # nothing lost, nothing doubled
    assert [r["reason"] for r in read_rows(out / "rejects.parquet")] == ["undecodable"]
    assert not list((out / "chunks").glob(".*.tmp"))


def test_two_ranks_give_the_same_manifest_as_one(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    make_folder(src, 9)
    one = write_config(tmp_path / "one.yaml", tmp_path / "one", section(src))
    assert ingest_images.main(["--config", str(one)]) == 0

    two = write_config(tmp_path / "two.yaml", tmp_path / "two", section(src))
    out = tmp_path / "two/data/images"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert ingest_images.main(["--config", str(two)]) == 0
    assert sorted(p.name for p in (out / "chunks").glob("*.done")) == ["chunk-000001.done", "chunk-000003.done"]
    assert not (out / "manifest.parquet").exists()  # rank 1 does not merge
    assert ingest_images.main(["--config", str(two), "--merge-only"]) == 1  # rank 0's chunks are missing
    err = capsys.readouterr().err
    assert "3 chunk(s) not finished" in err and "chunk-000000.done" in err
    monkeypatch.setenv("RANK", "0")
    assert ingest_images.main(["--config", str(two)]) == 0
    for name in ("manifest.parquet", "rejects.parquet"):
        assert (out / name).read_bytes() == (tmp_path / f"one/data/images/{name}").read_bytes()


def test_changed_source_redoes_only_its_chunk(tmp_path):
    src = tmp_path / "src"
    make_folder(src, 6)
    cfg = write_config(tmp_path / "a.yaml", tmp_path / "run", section(src))
    assert ingest_images.main(["--config", str(cfg)]) == 0
    chunks = tmp_path / "run/data/images/chunks"
    stamps = {p.name: p.stat().st_mtime_ns for p in chunks.glob("*.done")}
    (src / "part0/0000.jpg").write_bytes(encode(noise(30, 30), "JPEG"))  # now too small; sorts into chunk 0
    time.sleep(0.01)
    assert ingest_images.main(["--config", str(cfg)]) == 0
    redone = sorted(p.name for p in chunks.glob("*.done") if p.stat().st_mtime_ns != stamps[p.name])
    assert redone == ["chunk-000000.done"]
    reasons = {Path(r["path"]).name: r["reason"] for r in read_rows(tmp_path / "run/data/images/rejects.parquet")}
    assert reasons["0000.jpg"] == "too_small"


def _dies_on_three(x: int) -> int:
    if x == 3:
        os._exit(7)  # what a segfaulting decoder looks like to the pool
    return x * 10


def test_isolating_pool_singles_out_the_item_that_kills_its_worker():
    pool = IsolatingPool(2)
    try:
        got = pool.map(_dies_on_three, list(range(6)), on_crash=lambda x: f"crashed:{x}")
        assert got == [0, 10, 20, "crashed:3", 40, 50]
        assert pool.map(_dies_on_three, [1, 2], on_crash=str) == [10, 20]  # usable afterwards
    finally:
        pool.close()

"""Stage 50 (tokenize) and the decode command: splits, clips, kill-and-resume, ranks, rejects."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from model.vqgan import VQGAN, preset
from pipeline.formats import manifest, shards, vqgan_io
from pipeline.formats.video_io import write_mp4
from pipeline.tokens import decode, tokenize
from tests.test_vqgan_train import make_images

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("", "train", "test", "")  # "" = not split yet, counts as train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Source images, a tiny VQGAN file, and a one-rank reference tokenisation."""
    base = tmp_path_factory.mktemp("tok")
    rows = make_images(base / "src", 12, 64, seed=4, splits=SPLITS)
    torch.manual_seed(0)
    model = VQGAN(preset("tiny_f16"))
    with torch.no_grad():
        model.quantize.embedding.weight.normal_()  # spread codes so that grids differ between images
    weights = base / "weights" / "vqgan.safetensors"
    vqgan_io.save_vqgan(model, weights)
    ref = base / "reference"
    cfg = setup_run(ref, rows, weights)
    assert tokenize.main(["--config", str(cfg)]) == 0
    return {"base": base, "rows": rows, "weights": weights, "reference": ref, "model": model.eval()}


def setup_run(root: Path, rows: list[dict], weights: Path, clips: list[dict] | None = None, **tok) -> Path:
    manifest.write_rows(root / "run" / "data" / "images" / "manifest.parquet", rows, manifest.IMAGE_COLUMNS)
    if clips is not None:
        manifest.write_rows(root / "run" / "data" / "videos" / "kept.parquet", clips, manifest.CLIP_COLUMNS)
    cfg = root / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "run_dir": "run", "seed": 0,
        "vqgan": {"preset": "tiny_f16", "weights": str(weights)},
        "tokenize": {"batch_size": 2, "shard_size": 2, "merge_wait_s": 120.0, **tok}}))
    return cfg


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def codes_by_id(folder: Path) -> dict[str, np.ndarray]:
    ts = shards.TokenSet(folder)
    return {ts.ids[i]: ts.codes(i) for i in range(len(ts))}


def subprocess_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_splits_grids_and_index_columns(data):
    tokens = data["reference"] / "run" / "tokens" / "images"
    assert sorted(p.name for p in tokens.iterdir()) == ["test", "train"]
    by_split = {s: {r["id"] for r in data["rows"] if (r["split"] or "train") == s} for s in ("train", "test")}
    sha = vqgan_io.atomic.sha256_file(data["weights"])
    model = data["model"]
    for split, ids in by_split.items():
        ts = shards.TokenSet(tokens / split)
        assert set(ts.ids) == ids
        assert ts.meta.grid == (1, 4, 4) and ts.meta.vocab_size == 64 and ts.meta.vqgan_sha256 == sha
        index = manifest.read_rows(tokens / split / "index.parquet")
        row = {r["id"]: r for r in data["rows"]}[index[0]["id"]]
        assert index[0]["caption"] == row["caption"] and index[0]["source"] == row["source"]
        assert index[0]["crop"] == row["crop"] and index[0]["vqgan_sha256"] == sha
        pixels = manifest.load_image_crop(row["path"], row["crop"], 64)
        x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            assert np.array_equal(ts.codes(0)[0], model.encode(x)[0].numpy())


def test_rerun_skips_finished_shards(data, caplog):
    folder = data["reference"] / "run" / "tokens" / "images" / "train"
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npy")}
    with caplog.at_level("INFO"):
        assert tokenize.main(["--config", str(data["reference"] / "run.yaml")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("shard-*.npy")} == before
    assert "5/5 shards already done" in caplog.text  # 9 train images, 2 per shard


def test_killed_run_resumes_to_byte_identical_shards(data, tmp_path):
    # Same items, but the 6th train image is a FIFO: the run blocks there, mid-way, until killed.
    src = tmp_path / "src"
    shutil.copytree(data["base"] / "src", src)
    rows = [{**r, "path": str(src / Path(r["path"]).name)} for r in data["rows"]]
    train = [r for r in rows if (r["split"] or "train") == "train"]
    blocker = Path(train[5]["path"])
    blocker.unlink()
    os.mkfifo(blocker)
    cfg = setup_run(tmp_path, rows, data["weights"])
    folder = tmp_path / "run" / "tokens" / "images" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.tokens.tokenize", "--config", str(cfg)], cwd=ROOT,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (folder / "shard-R000-00001.done").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "tokenize subprocess made no progress"
            time.sleep(0.05)
        time.sleep(0.5)  # let it reach the FIFO in shard 2
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (folder / "shard-R000-00002.done").exists() and not (folder / "index.parquet").exists()
    (folder / ".shard-R000-00002.npy.dead.tmp").write_bytes(b"half a shard")  # as a kill mid-write leaves
    blocker.unlink()
    shutil.copy(data["base"] / "src" / blocker.name, blocker)
    assert tokenize.main(["--config", str(cfg)]) == 0
    ref = data["reference"] / "run" / "tokens"
    assert folder_bytes(tmp_path / "run" / "tokens") == folder_bytes(ref)


def test_two_ranks_give_the_same_codes_as_one(data, tmp_path, capsys):
    cfg = setup_run(tmp_path, data["rows"], data["weights"])
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.tokens.tokenize", "--config", str(cfg)], cwd=ROOT,
                              env=subprocess_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for r in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    for split in ("train", "test"):
        folder = tmp_path / "run" / "tokens" / "images" / split
        names = sorted(p.stem for p in folder.glob("shard-*.done"))
        assert any("-R000-" in n for n in names) and any("-R001-" in n for n in names)
        two = codes_by_id(folder)
        one = codes_by_id(data["reference"] / "run" / "tokens" / "images" / split)
        assert sorted(two) == sorted(one)
        for item, codes in one.items():
            assert np.array_equal(two[item], codes), item
    # A re-run with another world size must not mix two shard layouts in one token set.
    assert tokenize.main(["--config", str(cfg)]) == 1  # one line, no traceback (pipeline.errors)
    err = capsys.readouterr().err
    assert "pipeline.tokens.tokenize: error: " in err and "another plan" in err
    assert tokenize.main(["--config", str(cfg), "--merge-only"]) == 0


def test_clips_are_tokenized_frame_by_frame_and_decoded(data, tmp_path, capsys):
    rng = np.random.default_rng(2)
    clips = []
    for i in range(3):
        yy, xx = np.mgrid[0:64, 0:64]
        frames = np.stack([np.stack([128 + 100 * np.sin(0.1 * xx + 0.4 * t + i), 128 + 90 * np.cos(0.07 * yy - t),
                                     rng.uniform(60, 200) + 0 * xx], -1) for t in range(4)])
        path = tmp_path / f"clip{i}.mp4"
        write_mp4(path, frames.clip(0, 255).astype(np.uint8), fps=5)
        clips.append({"id": f"clip-{i}", "path": str(path), "source": "video.mp4", "start": 2.0 * i, "fps": 5.0,
                      "frames": 4, "size": 64, "caption": f"clip {i}", "split": ""})
    cfg = setup_run(tmp_path, data["rows"][:4], data["weights"], clips=clips)
    assert tokenize.main(["--config", str(cfg)]) == 0
    ts = shards.TokenSet(tmp_path / "run" / "tokens" / "videos" / "train")
    assert len(ts) == 3 and ts.meta.grid == (4, 4, 4)
    model = data["model"]
    codes, caption, item = ts[1]
    frames = tokenize.read_clip(clips[1]["path"], 4, 64)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)[None].float() / 127.5 - 1
    with torch.no_grad():
        assert np.array_equal(codes, model.encode_video(x)[0].numpy())
    assert caption == "clip 1" and item == "clip-1" and codes.min() >= 0 and codes.max() < 64

    out = tmp_path / "clip.mp4"
    assert decode.main(["--config", str(cfg), "--tokens", str(ts.folder), "--id", "clip-1", "--out", str(out)]) == 0
    import av

    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (64, 64, 3)
    # clip_frames: the first N frames of every clip (the paper's 5-frame training clips cut from the
    # 8-frame clips its Table 2 needs); more frames than the clips have is a clear error
    short = setup_run(tmp_path / "short", data["rows"][:4], data["weights"], clips=clips, clip_frames=2)
    assert tokenize.main(["--config", str(short)]) == 0
    two = shards.TokenSet(tmp_path / "short" / "run" / "tokens" / "videos" / "train")
    assert two.meta.grid == (2, 4, 4) and np.array_equal(two.codes(1), codes[:2])
    capsys.readouterr()
    assert tokenize.main(["--config", str(setup_run(tmp_path / "long", data["rows"][:4], data["weights"], clips=clips,
                                                    clip_frames=5))]) == 1
    assert re.search("clip_frames is 5 but the clips of .* have 4 frames", capsys.readouterr().err)
    # An image entry and a bare .npy grid go to PNGs holding exactly the model's decode.
    img_set = tmp_path / "run" / "tokens" / "images" / "train"
    grid = shards.TokenSet(img_set).codes(0)
    np.save(tmp_path / "grid.npy", grid[0].astype(np.int16))
    for args in (["--tokens", str(img_set), "--index", "0"], ["--codes", str(tmp_path / "grid.npy")]):
        png = tmp_path / "x.png"
        assert decode.main(["--config", str(cfg), *args, "--out", str(png)]) == 0
        want = decode.codes_to_frames(model, grid)[0]
        assert np.array_equal(np.asarray(Image.open(png)), want)


def test_bad_items_are_rejected_and_bad_setups_refused(data, tmp_path, capsys):
    rows = [dict(r) for r in data["rows"][:5]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows[1]["path"] = str(broken)
    cfg = setup_run(tmp_path, rows, data["weights"])
    assert tokenize.main(["--config", str(cfg)]) == 0
    folder = tmp_path / "run" / "tokens" / "images" / "train"
    rejects = manifest.read_rows(folder / "rejects.parquet")
    assert [r["id"] for r in rejects] == [rows[1]["id"]] and "broken.png" in rejects[0]["reason"]
    assert rows[1]["id"] not in shards.TokenSet(folder).ids and len(shards.TokenSet(folder)) == 3

    mixed = [dict(r) for r in data["rows"][:3]]
    mixed[0]["size"] = 32
    cfg = setup_run(tmp_path / "mixed", mixed, data["weights"])
    capsys.readouterr()
    assert tokenize.main(["--config", str(cfg)]) == 1
    assert "image_size" in capsys.readouterr().err
    cfg = setup_run(tmp_path / "odd", data["rows"][:3], data["weights"], image_size=40)
    assert tokenize.main(["--config", str(cfg)]) == 1
    assert "multiple of the VQGAN's factor 16" in capsys.readouterr().err

"""Stage 15 (pipeline.curation.ingest_videos) on a corpus of odd videos made here with PyAV."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.curation.ingest_videos import CutSettings, IngestVideosConfig, check_video, main, pick_pexels_file, run
from pipeline.formats.manifest import CLIP_COLUMNS, read_rows
from pipeline.formats.video_io import VideoInfo, probe, read_frames_at
from pipeline.ranks import RankInfo
from tests.test_video_io import RED, halves, make_audio_only, make_video, moving_frames

ROOT = Path(__file__).resolve().parents[1]
FPS, FRAMES, SIZE, MIN_SIDE = 5.0, 3, 32, 48

# file -> what must become of it: an int = clips kept, a string = the reject reason
EXPECTED = {
    "good_wide.mp4": 3,          # 96x64, 2.0 s at 10 fps -> 10 frames at 5 fps -> 3 clips of 3
    "good_square.mkv": 2,        # 64x64, 1.4 s at 25 fps -> 7 frames -> 2 clips
    "good_mpeg4.avi": 2,         # MPEG-4 part 2 in AVI, 6 frames at 5 fps
    "good_vp9.webm": 1,          # VP9 in WebM
    "good_audio.mov": 2,         # video + audio track
    "portrait.mp4": 1,           # stored 64x96 (no rotation needed)
    "rotated.mp4": 2,            # stored 96x64, display matrix turns it to 64x96
    "vfr.mp4": None,             # variable frame rate, resampled by timestamp: count from its probed duration
    "sub/nested.mp4": 1,         # found recursively
    "tiny.mp4": "too_small",
    "short.mp4": "too_short",
    "one_frame.mp4": "too_short",
    "zero.mp4": "empty_file",
    "text.mp4": "not_a_video",
    "binary.mkv": "not_a_video",
    "truncated.mp4": "corrupt",  # moov box at the end: cut off
    "truncated_faststart.mp4": "truncated",
    "ftyp_garbage.mp4": "corrupt",
    "audio_only.mp4": "audio_only",
    "tilted.mp4": "unsupported_rotation",
    "mirrored.mp4": "unsupported_rotation",
}


def build_corpus(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    make_video(root / "good_wide.mp4", moving_frames(20, 64, 96, seed=1), fps=10)
    make_video(root / "good_square.mkv", moving_frames(35, 64, 64, seed=2), fps=25, fmt="matroska")
    make_video(root / "good_mpeg4.avi", moving_frames(6, 64, 64, seed=3), fps=5, codec="mpeg4", fmt="avi")
    make_video(root / "good_vp9.webm", moving_frames(3, 48, 64, seed=4), fps=5, codec="libvpx-vp9",
               fmt="webm")
    make_video(root / "good_audio.mov", moving_frames(12, 48, 48, seed=5), fps=10, fmt="mov", audio=True)
    make_video(root / "portrait.mp4", moving_frames(4, 96, 64, seed=6), fps=5)
    make_video(root / "rotated.mp4", np.stack([halves(64, 96)] * 12), fps=10, rotation=-90)
    make_video(root / "vfr.mp4", moving_frames(8, 64, 64, seed=7), fps=10,
               pts_ms=[0, 40, 300, 340, 800, 900, 1150, 1250])
    (root / "sub").mkdir(exist_ok=True)
    make_video(root / "sub" / "nested.mp4", moving_frames(3, 48, 48, seed=8), fps=5)
    make_video(root / "tiny.mp4", moving_frames(10, 24, 32), fps=5)
    make_video(root / "short.mp4", moving_frames(2, 64, 64), fps=5)
    make_video(root / "one_frame.mp4", moving_frames(1, 64, 64), fps=5)
    (root / "zero.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is not a video\n" * 50)
    (root / "binary.mkv").write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    good = (root / "good_wide.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 2])
    fast = make_video(root / "fs.mp4", moving_frames(30, 64, 64), fps=10, faststart=True).read_bytes()
    (root / "fs.mp4").unlink()
    (root / "truncated_faststart.mp4").write_bytes(fast[: int(len(fast) * 0.6)])
    (root / "ftyp_garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 8)
    make_audio_only(root / "audio_only.mp4")
    make_video(root / "tilted.mp4", moving_frames(5, 64, 64), fps=5, rotation=30)
    make_video(root / "mirrored.mp4", moving_frames(5, 64, 64), fps=5, hflip=True)
    (root / "notes.txt").write_text("not a video extension: ignored\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "videos")


def write_config(tmp: Path, sources: list[dict], **over) -> Path:
    section = {"sources": sources, "fps": FPS, "frames": FRAMES, "size": SIZE, "min_side": MIN_SIDE,
               "workers": 0, "chunk_size": 4, "merge_timeout_s": 30,
               "download": {"timeout_s": 5, "retries": 1, "backoff_s": 0.01, "max_bytes": 10_000_000}}
    section.update(over)
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp / "run"), "seed": 3, "ingest_videos": section}))
    return cfg


def outputs(run_dir: Path) -> dict[str, bytes]:
    """Every output file of the stage (manifests and clips), by path relative to data/videos."""
    out = run_dir / "data" / "videos"
    files = [out / "clips.parquet", out / "rejects.parquet", *sorted((out / "clips").rglob("*.mp4"))]
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def relative_rows(path: Path, run_dir: Path) -> list[dict]:
    rows = read_rows(path)
    for r in rows:
        r["path"] = os.path.relpath(r["path"], run_dir)
        r["source"] = os.path.relpath(r["source"], run_dir) if r["source"].startswith("/") else r["source"]
    return rows


def test_odd_corpus_every_file_accounted_for(corpus, tmp_path):
    cfg = write_config(tmp_path, [{"kind": "folder", "path": str(corpus)}])
    assert main(["--config", str(cfg)]) == 0
    out = tmp_path / "run" / "data" / "videos"
    clips = read_rows(out / "clips.parquet", CLIP_COLUMNS)
    rejects = read_rows(out / "rejects.parquet")
    kept = {}
    for r in clips:
        kept.setdefault(os.path.relpath(r["source"], corpus), []).append(r)
    rejected = {os.path.relpath(r["path"], corpus): r for r in rejects}
    assert set(kept) | set(rejected) == set(EXPECTED) and not set(kept) & set(rejected)
    for name, want in EXPECTED.items():
        if want is None:  # the container decides how long the last frame lasts
            want = int(np.ceil(probe(corpus / name).duration_s * FPS - 1e-9)) // FRAMES
            assert want >= 2
        if isinstance(want, int):
            assert len(kept.get(name, [])) == want, (name, rejected.get(name))
        else:
            assert rejected[name]["reason"] == want, (name, rejected[name])
            assert name.split("/")[-1] in rejected[name]["detail"]
    ids = [r["id"] for r in clips]
    assert len(set(ids)) == len(ids) and all(i.startswith("clip-") for i in ids)
    for r in clips:  # every clip: exactly FRAMES frames at SIZE x SIZE and FPS
        info = probe(r["path"])
        assert (info.frame_count, info.width, info.height) == (FRAMES, SIZE, SIZE)
        assert info.fps == pytest.approx(FPS, rel=1e-3)
        assert r["start"] == pytest.approx(r["clip_index"] * FRAMES / FPS)
        assert (r["fps"], r["frames"], r["size"], r["caption"], r["split"]) == (FPS, FRAMES, SIZE, "", "")
    wide = sorted(kept["good_wide.mp4"], key=lambda r: r["clip_index"])
    assert [r["crop"] for r in wide] == [[16, 0, 80, 64]] * 3  # centred square of 96x64
    rot = kept["rotated.mp4"][0]
    assert (rot["src_width"], rot["src_height"], rot["src_rotation"], rot["crop"]) == (64, 96, 270, [0, 16, 64, 80])
    # displayed frame: red on top (the stored left half); the crop's top half is red, bottom half blue
    f = read_frames_at(rot["path"], [0.0])[0].astype(int)
    assert np.abs(f[: SIZE // 4].mean((0, 1)) - RED).max() < 30
    assert f[-SIZE // 4:, :, 2].mean() > 150 and f[-SIZE // 4:, :, 0].mean() < 80
    assert kept["vfr.mp4"][0]["src_variable_fps"] is True


def test_pexels_export_and_url_list_download(corpus, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    for name in ("good_wide.mp4", "portrait.mp4", "tiny.mp4", "good_square.mkv"):
        shutil.copy(corpus / name, served / name)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        def vf(name, w, h):
            return {"quality": "hd", "file_type": "video/mp4", "width": w, "height": h, "fps": 10,
                    "link": f"{base}/{name}"}

        records = {"page": 1, "videos": [
            {"id": 11, "width": 96, "height": 64, "duration": 2, "url": "https://www.pexels.com/video/a-11/",
             "video_files": [vf("tiny.mp4", 32, 24), vf("good_wide.mp4", 96, 64), vf("nothere.mp4", 192, 128)]},
            {"id": 12, "width": 32, "height": 24, "duration": 2, "url": "https://www.pexels.com/video/b-12/",
             "video_files": [vf("tiny.mp4", 32, 24)]},
            {"id": 13, "width": 96, "height": 64, "duration": 0.2, "url": "https://www.pexels.com/video/c-13/",
             "video_files": [vf("good_wide.mp4", 96, 64)]},
            {"width": 5},
            {"id": 14, "width": 64, "height": 96, "duration": 1, "url": "https://www.pexels.com/video/d-14/",
             "video_files": [vf("missing.mp4", 64, 96)]},
        ]}
        (tmp_path / "pexels.json").write_text(json.dumps(records))
        (tmp_path / "urls.txt").write_text(f"# a comment\n{base}/portrait.mp4\n\nftp://example.com/x.mp4\n"
                                           f"{base}/good_square.mkv\n")
        cfg = write_config(tmp_path, [{"kind": "pexels", "path": "pexels.json"},
                                      {"kind": "urls", "path": "urls.txt"}])
        assert main(["--config", str(cfg)]) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
    out = tmp_path / "run" / "data" / "videos"
    clips = read_rows(out / "clips.parquet")
    by_source = {}
    for r in clips:
        by_source.setdefault(r["source"], []).append(r)
    # record 11: the smallest file with shorter side >= 48 is good_wide (96x64), not tiny or the larger one
    assert sorted(by_source) == sorted([f"{base}/good_wide.mp4", f"{base}/portrait.mp4",
                                        f"{base}/good_square.mkv"])
    assert len(by_source[f"{base}/good_wide.mp4"]) == 3
    reasons = sorted(r["reason"] for r in read_rows(out / "rejects.parquet"))
    assert reasons == ["bad_record", "bad_record", "download_failed", "no_suitable_file", "too_short"]
    raw = sorted(p.name for p in (out / "raw").iterdir())
    assert len(raw) == 3 and all(not n.endswith(".part") for n in raw)


def test_pick_pexels_file_rules():
    rec = {"video_files": [
        {"file_type": "video/mp4", "width": 3840, "height": 2160, "link": "https://x/4k.mp4"},
        {"file_type": "video/mp4", "width": 1920, "height": 1080, "link": "https://x/hd.mp4"},
        {"file_type": "video/mp4", "width": 1280, "height": 720, "link": "https://x/720.mp4"},
        {"file_type": "image/jpeg", "width": 1080, "height": 1920, "link": "https://x/still.jpg"},
        {"file_type": "video/mp4", "width": 1080, "height": 1920, "link": "ftp://x/portrait.mp4"},
    ]}
    assert pick_pexels_file(rec, 1024, "smallest_sufficient")["link"] == "https://x/hd.mp4"
    assert pick_pexels_file(rec, 1024, "largest")["link"] == "https://x/4k.mp4"
    assert pick_pexels_file(rec, 2500, "smallest_sufficient") is None


def test_variable_fps_policy_and_checks():
    cut = CutSettings(fps=5, frames=5, size=32, min_side=32, crop="center", max_clips_per_video=0,
                      variable_fps="reject", crf=18, seed=0)
    vfr = VideoInfo(path="v.mp4", has_video=True, has_audio=False, duration_s=3, fps=7.5, variable_fps=True,
                    frame_count=22, width=64, height=64, coded_width=64, coded_height=64)
    assert check_video(vfr, cut)[0] == "variable_frame_rate"
    assert check_video(vfr, CutSettings(**{**cut.__dict__, "variable_fps": "resample"})) is None
    short = VideoInfo(**{**vfr.__dict__, "variable_fps": False, "duration_s": 0.99})
    assert check_video(short, cut)[0] == "too_short"


def test_two_ranks_merge_to_the_one_rank_result_and_rerun_is_a_no_op(corpus, tmp_path):
    sources = [{"kind": "folder", "path": str(corpus)}]
    one = tmp_path / "one"
    two = tmp_path / "two"
    one.mkdir(), two.mkdir()
    from pipeline.config import load_config

    def go(tmp, ranks):
        rc = load_config(write_config(tmp, sources, crop="random", max_clips_per_video=2))
        cfg = rc.section("ingest_videos", IngestVideosConfig)
        return run(cfg, rc.run_dir, rc.seed, rc.resolve, ranks=ranks)

    go(one, RankInfo(0, 1, 0))
    r1 = go(two, RankInfo(1, 2, 1))  # rank 1 first: it does its chunks and leaves
    assert not (two / "run" / "data" / "videos" / "clips.parquet").exists() and r1["seen"] > 0
    go(two, RankInfo(0, 2, 0))  # rank 0 does its chunks and merges
    a, b = one / "run", two / "run"
    for name in ("clips.parquet", "rejects.parquet"):
        assert relative_rows(a / "data/videos" / name, a) == relative_rows(b / "data/videos" / name, b)
    oa, ob = outputs(a), outputs(b)
    clips_a = {k: v for k, v in oa.items() if k.endswith(".mp4")}
    assert clips_a and clips_a == {k: v for k, v in ob.items() if k.endswith(".mp4")}
    crops = [r["crop"] for r in read_rows(a / "data/videos/clips.parquet") if r["source"].endswith("good_wide.mp4")]
    assert len(crops) == 2 and all(c[2] - c[0] == 64 for c in crops)  # max_clips_per_video, random crops
    # a second run finds every chunk and the merge done: nothing is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (a / "data/videos").rglob("*") if p.is_file()}
    go(one, RankInfo(0, 1, 0))
    assert mtimes == {p: p.stat().st_mtime_ns for p in (a / "data/videos").rglob("*") if p.is_file()}


def test_sigkill_midway_then_rerun_is_byte_identical(corpus, tmp_path):
    cfg = write_config(tmp_path, [{"kind": "folder", "path": str(corpus)}], chunk_size=2, workers=1)
    run_dir = tmp_path / "run"
    assert main(["--config", str(cfg)]) == 0  # the reference: an uninterrupted run (with a worker pool)
    reference = outputs(run_dir)
    shutil.rmtree(run_dir)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.curation.ingest_videos", "--config", str(cfg)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chunks = run_dir / "data" / "videos" / "chunks"
    deadline = time.monotonic() + 60
    while not (chunks / "chunk-000001.done").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stage ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "data" / "videos" / "clips.parquet").exists()  # killed midway
    n_done = len(list(chunks.glob("*.done")))
    assert 2 <= n_done < 11

    assert main(["--config", str(cfg)]) == 0
    assert outputs(run_dir) == reference
    leftovers = [p for p in (run_dir / "data").rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []
    table = pq.read_table(run_dir / "data" / "videos" / "clips.parquet")
    assert len(set(table.column("id").to_pylist())) == table.num_rows  # nothing duplicated

"""Stage 00 (pipeline.demo_data.make): files, metadata, ground truth, resuming, config handling."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.demo_data import landscape as L
from pipeline.demo_data import make as M

ROOT = Path(__file__).resolve().parents[1]
SMALL = """\
run_dir: run
seed: {seed}
demo_data:
  images: 6
  videos: 3
  image_size: 32
  image_width: 48
  video_size: 48
  video_frames: 6
  video_fps: 10
  object_fraction: 0.34
  pan_fraction: 0.5
"""


def write_config(tmp_path: Path, seed: int = 3, text: str = SMALL, name: str = "run.yaml") -> Path:
    cfg = tmp_path / name
    cfg.write_text(text.format(seed=seed))
    return cfg


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    cfg = write_config(tmp)
    assert M.main(["--config", str(cfg), "--no-progress"]) == 0
    return tmp / "run" / "demo_data"


def test_writes_images_videos_and_metadata(made):
    images = read_jsonl(made / "images" / "metadata.jsonl")
    videos = read_jsonl(made / "videos" / "metadata.jsonl")
    assert [r["file_name"] for r in images] == [f"img_{i:05d}.png" for i in range(6)]
    assert sorted(p.name for p in (made / "images").glob("*.png")) == [r["file_name"] for r in images]
    assert sorted(p.name for p in (made / "videos").glob("*.mp4")) == [r["file_name"] for r in videos]
    assert all(set(r) == {"file_name", "caption"} for r in images)
    assert all(set(r) == {"file_name", "caption", "has_object"} for r in videos)
    assert sum(r["has_object"] for r in videos) == 1  # round(0.34 * 3)
    for r in images:
        with Image.open(made / "images" / r["file_name"]) as im:
            assert im.size == (48, 32) and im.mode == "RGB"
    assert (made / ".done").is_file()

    # Ground truth: captions are those of the recorded scenes, images their renders.
    truth = {r["file_name"]: r for r in read_jsonl(made / "scenes.jsonl")}
    for r in images:
        t = truth[f"images/{r['file_name']}"]
        s = L.Scene.from_dict(t["scene"])
        assert r["caption"] == L.caption(s)
        pixels = np.asarray(Image.open(made / "images" / r["file_name"]))
        assert np.array_equal(pixels, L.render(s, 32, 48, x_offset=t["x_offset"]))
    for r in videos:
        assert r["caption"] == L.caption(L.Scene.from_dict(truth[f"videos/{r['file_name']}"]["scene"]))


def test_object_clips_differ_from_the_object_free_render(made):
    truth = [r for r in read_jsonl(made / "scenes.jsonl") if r["kind"] == "video"]
    flags = {r["file_name"]: r["has_object"] for r in read_jsonl(made / "videos" / "metadata.jsonl")}
    assert len(truth) == 3
    for t in truth:
        scene, motion = L.Scene.from_dict(t["scene"]), M.Motion.from_dict(t["motion"])
        assert flags[Path(t["file_name"]).name] == t["has_object"] == (motion.obj is not None)
        frames = decode(made / t["file_name"])
        assert frames.shape == (6, 48, 48, 3)
        plain = M.render_video(scene, motion, t["size"], t["frames"], t["fps"], with_object=False).astype(int)
        diff = np.abs(frames.astype(int) - plain).max(axis=-1)
        assert np.median(diff) < 8  # away from the object: only H.264 coding noise
        if t["has_object"]:  # where the object is drawn the video differs far beyond coding noise
            drawn = M.render_video(scene, motion, t["size"], t["frames"], t["fps"]).astype(int)
            mask = np.abs(drawn - plain).max(axis=-1) > 80
            assert mask.sum(axis=(1, 2)).min() >= 6  # in every frame
            assert np.median(diff[mask]) > 60
        else:
            assert diff.mean() < 8


def test_same_seed_same_bytes_other_seed_differs(made, tmp_path):
    again = write_config(tmp_path, seed=3)
    other = write_config(tmp_path, seed=4, name="other.yaml")
    other.write_text(other.read_text().replace("run_dir: run", "run_dir: run_other"))
    assert M.main(["--config", str(again), "--no-progress"]) == 0
    assert M.main(["--config", str(other), "--no-progress"]) == 0
    for i in range(6):
        name = f"images/img_{i:05d}.png"
        assert (tmp_path / "run/demo_data" / name).read_bytes() == (made / name).read_bytes()
        assert (tmp_path / "run_other/demo_data" / name).read_bytes() != (made / name).read_bytes()
    assert (tmp_path / "run/demo_data/videos/metadata.jsonl").read_text() == \
        (made / "videos/metadata.jsonl").read_text()


def test_rerun_skips_finished_work_and_finishes_interrupted_work(tmp_path, capsys):
    cfg = write_config(tmp_path)
    out = tmp_path / "run" / "demo_data"
    assert M.main(["--config", str(cfg), "--no-progress"]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert M.main(["--config", str(cfg), "--no-progress"]) == 0
    assert "(0 made now)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps

    # An interrupted run: no done-marker, one image and one video missing, a stale temporary.
    (out / ".done").unlink()
    (out / "images" / "img_00002.png").unlink()
    (out / "videos" / "vid_0001.mp4").unlink()
    (out / "images" / ".img_00003.png.abc.tmp").write_bytes(b"half")
    assert M.main(["--config", str(cfg), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "6 images (1 made now)" in printed and "3 videos (1 made now" in printed
    assert (out / "images" / "img_00002.png").is_file() and (out / "videos" / "vid_0001.mp4").is_file()
    assert not list(out.rglob("*.tmp")) and (out / ".done").is_file()
    assert (out / "images/img_00000.png").stat().st_mtime_ns == stamps[out / "images/img_00000.png"]

    # Other settings: the old files go, the new set is made.
    cfg.write_text(cfg.read_text().replace("images: 6", "images: 4"))
    assert M.main(["--config", str(cfg), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [f"img_{i:05d}.png" for i in range(4)]
    assert len(read_jsonl(out / "images" / "metadata.jsonl")) == 4


def test_config_without_section_does_nothing_and_bad_keys_fail(tmp_path, capsys):
    cfg = tmp_path / "real.yaml"
    cfg.write_text("run_dir: run\nseed: 1\n")
    assert M.main(["--config", str(cfg)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: run\ndemo_data:\n  imagez: 3\n")
    assert M.main(["--config", str(bad)]) == 1  # pipeline.errors: 1 = an error the user can fix
    odd = tmp_path / "odd.yaml"
    odd.write_text("run_dir: run\ndemo_data:\n  video_size: 33\n")
    assert M.main(["--config", str(odd)]) == 1
    assert not (tmp_path / "run").exists()


def test_stage_script_and_preview(tmp_path):
    cfg = tmp_path / "real.yaml"
    cfg.write_text("run_dir: run\n")
    done = subprocess.run(["bash", str(ROOT / "stages" / "00_make_demo_data.sh"), "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout
    sheet = tmp_path / "sheet.png"
    assert M.main(["--preview", str(sheet), "--count", "4", "--config", str(write_config(tmp_path))]) == 0
    with Image.open(sheet) as im:
        # 4 images of 32 px in a row, 3 panoramas, 1 row of video frames, white gaps of 2 px.
        assert im.size == (4 * 32, 5 * 32 + 4 * 2)

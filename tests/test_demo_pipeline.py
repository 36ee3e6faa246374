"""The embedded default end to end: configs/demo.yaml at a smaller setting, every stage, through run.sh.

Runs the real stage scripts (two DeepSpeed CPU ranks for training included) on a few procedural
images and videos, checks every stage's output, then runs again and checks that finished work is
reused rather than redone.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def small_demo_config(tmp: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    run = tmp / "run"
    text = yaml.safe_dump(cfg).replace("../runs/demo", str(run))  # every path of the demo, moved
    cfg = yaml.safe_load(text)
    small = {
        "run_dir": str(run),
        "demo_data": {"images": 24, "videos": 3, "image_size": 64, "video_size": 64, "video_frames": 10,
                      "object_fraction": 0.34},
        "ingest_images": {"min_side": 64, "size": 64, "chunk_size": 12},
        "ingest_videos": {"min_side": 64, "size": 64, "frames": 2},
        "filter": {"split": {"test_fraction": 0.34, "salt": "lhqv"}},  # 1 of the 3 videos held out
        "caption": {"split": {"test_fraction": 0.25}},
        "train_vqgan": {"size": 64, "steps": 4, "image_every": 2, "ckpt_every": 2},
        "model": {"n_layer": 1, "d_model": 32, "text_vocab_size": 300},
        "train": {"epochs": 1, "micro_batch": 3, "global_batch": 6, "save_every": 4, "sample_every": 0},
        "profiles": {"video": {"train": {"epochs": 1, "global_batch": 2, "micro_batch": 1}}},
        "evaluate": {"block_size": 32, "block_stride": 16},
        "protocol": {"table2": {"frames": 2}},  # the small demo's clips have 2 frames
    }
    cfg = deep_merge(cfg, small)
    for job in cfg["sample"]["jobs"]:  # 64 x 64 training images: a panorama 4x as wide
        if job["mode"] == "text_to_image":
            job["size"] = [64, 256]
        if job["mode"] == "extend":
            job["input_index"] %= 24  # the small data set's manifest has 24 rows
            if "input_crop" in job:  # half of a 64 x 64 image, grown back to 64 x 64
                job["amount"] = 32
                job["input_crop"] = [v // 2 for v in job["input_crop"]]
            else:  # the panorama: a whole image grown to 4x its width
                job["amount"] = 192
        if job["mode"] == "image_to_video":
            job["frames"] = 2
    return cfg


def run_all(config: Path) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "stages", "all", "--config", str(config)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    return log


@pytest.mark.slow
def test_demo_pipeline_end_to_end_and_rerun_reuses_work(tmp_path):
    config = tmp_path / "demo_small.yaml"
    config.write_text(yaml.safe_dump(small_demo_config(tmp_path)))
    run = tmp_path / "run"
    log = run_all(config)
    for stage in ("00_make_demo_data", "10_ingest_images", "15_ingest_videos", "20_filter_objects",
                  "30_caption", "40_train_vqgan", "50_tokenize", "60_train", "65_train_video", "70_sample",
                  "80_evaluate", "85_protocol", "90_summary"):
        assert f"stage {stage}.sh finished" in log, stage
    assert "object filter: SKIPPED" in log and "filter.weights is not set" in log

    import pyarrow.parquet as pq

    manifest = pq.read_table(run / "data/images/manifest.parquet").to_pylist()
    assert len(manifest) == 24 and {r["split"] for r in manifest} == {"train", "test"}
    assert all(r["caption"] for r in manifest)
    assert (run / "vqgan/vqgan.safetensors").is_file()
    for tokens in ("tokens/images/train", "tokens/images/test", "tokens/videos/train", "tokens/videos/test"):
        assert (run / tokens / "index.parquet").is_file(), tokens
    assert (run / "train/export/renderer.safetensors").is_file()
    assert (run / "video_model/train/export/renderer.safetensors").is_file()

    samples = run / "samples"
    assert Image.open(samples / "panorama.png").size == (256, 64)  # 4x the training width
    sizes = {side: Image.open(samples / f"extend-{side}.png").size for side in ("right", "left", "down", "up")}
    assert sizes == {side: (64, 64) for side in ("right", "left", "down", "up")}
    assert json.loads((samples / "panorama-text.json").read_text())["prompt"].startswith("high mountain ranges")
    import av

    with av.open(str(samples / "video.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 3 and frames[0].shape == (64, 64, 3)

    metrics = json.loads((run / "eval/metrics.json").read_text())
    bpt = metrics["metrics"]["bits_per_token"]["value"]
    assert 0 < bpt < 7 and np.isfinite(bpt)  # 64 codes: 6 bits is a uniform guess
    assert set(metrics["skipped"]) == {"block_fid", "inception_score", "clip_sim", "fvd"}
    assert "inception_weights" in metrics["skipped"]["block_fid"]
    summary = (run / "SUMMARY.md").read_text()
    assert "tensorboard --logdir" in summary

    # stage 85: the paper's three tables at the demo's scale, in the summary too; the metrics whose
    # weights cannot ship are skipped with the reason, bits per token and speed are measured
    for name in ("table1", "table2", "table3"):
        table = json.loads((run / "protocol" / name / f"{name}.json").read_text())
        assert table["ours"] and all(r["skipped"] for r in table["ours"])
        assert all(0 < b["bits_per_token"] < 7 for b in table["bits_per_token"]), name
        assert all(s and s["outputs"] > 0 for s in table["speed"].values()), name
        assert table["title"] in summary
    t1 = json.loads((run / "protocol/table1/table1.json").read_text())
    assert t1["speed"]["t2i"]["outputs"] == 6 and t1["speed"]["t2i-x4"]["outputs"] == 6  # every test caption
    assert Image.open(next((run / "protocol/table1/samples/t2i-x4").glob("*.png"))).size == (256, 64)
    t3 = json.loads((run / "protocol/table3/table3.json").read_text())
    assert len(t3["bits_per_token"]) == 8 and len(t3["speed"]) == 8  # 4 sides, w/o and w/ caption

    # Second run: every expensive stage finds its work done and leaves its files untouched; the
    # cheap merges (the manifest's captions and split, the token index) come out with the same bytes.
    shard = sorted((run / "tokens/images/train").glob("shard-*.npy"))[0]
    untouched = [run / "vqgan/vqgan.safetensors", shard,
                 run / "train/export/renderer.safetensors", run / "video_model/train/export/renderer.safetensors",
                 samples / "panorama.png", samples / "video.mp4"]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in untouched}
    merged = [run / "data/images/manifest.parquet", run / "tokens/images/train/index.parquet"]
    merged_bytes = [p.read_bytes() for p in merged]
    log2 = run_all(config)
    assert "(0 made now)" in log2 and "train_vqgan: already trained" in log2
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in untouched} == before
    assert [p.read_bytes() for p in merged] == merged_bytes


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

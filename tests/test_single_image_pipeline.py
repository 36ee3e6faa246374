"""configs/single_image.yaml end to end at a tiny size, through run.sh: one wide image in, a continuation out.

The project's panorama (stage 00) becomes the whole data set (stage 12), the VQGAN trains on crops of its
training box (40), it is tokenised whole into a canvas (50), the renderer trains on windows of it with
DeepSpeed on two CPU ranks (60), the canvas is continued to the right and upwards and a new image is made
from nothing (70), and the held-out strip gives bits per token beside the copy figures (80).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]


def small_config(tmp: Path) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "single_image.yaml").read_text())
    run = tmp / "run"
    cfg = yaml.safe_load(yaml.safe_dump(cfg).replace("../runs/single_image", str(run)))
    small = {
        "demo_data": {"image_size": 32, "image_width": 192},
        "single_image": {"holdout_pixels": 64},  # 2 patch columns of 32 px at f8 x 4 codes
        "train_vqgan": {"random_crop": 32, "batch_size": 2, "steps": 3, "image_every": 3, "ckpt_every": 3},
        "tokenize": {"tile": 32, "tile_margin": 8},
        "model": {"n_layer": 1, "d_model": 32},
        "train": {"windows": {"size": [1, 2], "per_epoch": 8}, "epochs": 1, "micro_batch": 2, "global_batch": 4,
                  "save_every": 8},
    }
    cfg = deep_merge(cfg, small)
    cfg["sample"]["jobs"] = [
        {"name": "continuation", "mode": "extend", "input": str(run / "tokens/single_image"), "side": "right",
         "amount": 2 * 192, "seed": 1},
        {"name": "new", "mode": "unconditional", "size": [32, 128], "seed": 2},
        {"name": "above", "mode": "extend", "input": str(run / "tokens/single_image"), "side": "up", "amount": 32,
         "seed": 3},
    ]
    return cfg


@pytest.mark.slow
def test_single_image_run_tokenises_trains_and_continues(tmp_path):
    config = tmp_path / "single.yaml"
    config.write_text(yaml.safe_dump(small_config(tmp_path)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", str(ROOT / "run.sh"), "stages", "all", "--config", str(config)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    for stage in ("00_make_demo_data", "12_single_image", "40_train_vqgan", "50_tokenize", "60_train", "70_sample",
                  "80_evaluate"):
        assert f"stage {stage}.sh finished" in log, stage
    run = tmp_path / "run"
    assert "crops of single images at 32x32" in log
    assert "code grid (1, 4, 8) -> patch grid 1x2x1" in log  # windows of 1 x 2 patches, not the whole image

    # the canvases: the whole usable image in codes, its last 8 columns held out, and its mirror image
    record, mirror = sorted((json.loads(p.read_text()) for p in (run / "tokens/single_image").glob("single-*.json")),
                            key=lambda r: r["id"])
    assert record["shape"] == [1, 4, 24] and record["holdout_box"] == [16, 0, 24, 4]
    assert mirror["id"] == record["id"] + "-mirror" and mirror["holdout_box"] == [0, 0, 8, 4]
    source = np.load(run / "tokens/single_image" / record["file"])

    samples = run / "samples"
    assert Image.open(samples / "continuation.png").size == (3 * 192, 32)  # the source + 2x its length
    codes = np.load(samples / "continuation.codes.npy")
    assert codes.shape == (1, 4, 3 * 24) and np.array_equal(codes[:, :, :24], source)  # given codes unchanged
    assert Image.open(samples / "new.png").size == (128, 32)
    above = np.load(samples / "above.codes.npy")  # one patch row grown above the source, which is kept
    assert above.shape == (1, 8, 24) and np.array_equal(above[:, 4:], source)
    sidecar = json.loads((samples / "continuation.json").read_text())
    assert sidecar["stats"]["patches_primed"] == 6 and sidecar["stats"]["patches_generated"] == 12

    metrics = json.loads((run / "eval/metrics.json").read_text())["metrics"]
    bpt = metrics["bits_per_token"]
    assert np.isfinite(bpt["value"]) and bpt["items"] == 2 and bpt["tokens"] == 64  # 4 x 8 held-out codes, twice
    copies = metrics["copy_share"]
    assert 0 <= copies["value"] <= 1 and copies["patches"] == 12 + 4 + 6
    assert copies["samples"]["continuation"]["generated_width_px"] == 2 * 192
    assert copies["holdout_baseline"]["patches"] == 4

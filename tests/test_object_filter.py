"""Stage 20 (pipeline.curation.object_filter): the decision rule, a tiny random Mask R-CNN in torchvision's
state-dict format, re-tuning without the detector, ranks and SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.curation import detectors
from pipeline.curation import object_filter as of
from pipeline.formats.manifest import CLIP_COLUMNS, read_rows, write_rows
from pipeline.formats.video_io import write_mp4
from pipeline.ranks import RankInfo
from tests.test_video_io import moving_frames

ROOT = Path(__file__).resolve().parents[1]
N_CLIPS = 5  # clip-03 is broken; chunks of 2 -> 3 chunks
SETTINGS = {"min_size": 32, "max_size": 32, "record_min_score": 0.0, "max_detections": 3, "proposals": 10,
            "frames_per_clip": 2, "device": "cpu"}
KEEP_ALL = {"score_threshold": 1.0, "min_mask_area": 0.0, "drop_any_score": None, "drop_flagged_fraction": 0.5}
DROP_ALL = {"score_threshold": 0.0, "min_mask_area": 0.0, "drop_any_score": None, "drop_flagged_fraction": 0.5}


# ------------------------------------------------------------------------------ the rule alone

def test_decide_on_crafted_detections():
    rule = of.RuleConfig(score_threshold=0.5, min_mask_area=0.01, drop_flagged_fraction=0.5, drop_any_score=0.95)
    none = of.decide([[], [], []], rule)
    assert none.keep and none.reason == "" and none.n_detections == [0, 0, 0] and none.flagged_fraction == 0
    # frame 0: one person counts; frame 1: confident but too small; frame 2: big but below threshold
    mixed = of.decide([[(0.8, "person", 0.2), (0.3, "dog", 0.5)], [(0.9, "car", 0.001)], [(0.4, "cow", 0.6)]], rule)
    assert mixed.n_detections == [1, 0, 0] and mixed.max_score == [0.8, 0.9, 0.4]
    assert mixed.max_mask_area == [0.2, 0.001, 0.0]
    assert mixed.keep and mixed.flagged_fraction == pytest.approx(1 / 3)
    two_of_three = of.decide([[(0.8, "person", 0.2)], [(0.6, "boat", 0.05)], []], rule)
    assert not two_of_three.keep and two_of_three.reason == "objects_in_frames"
    tiny_but_sure = of.decide([[(0.97, "bird", 0.0001)], [], [], []], rule)
    assert not tiny_but_sure.keep and tiny_but_sure.reason == "confident_object"
    no_veto = of.RuleConfig(score_threshold=0.5, min_mask_area=0.01, drop_flagged_fraction=0.5, drop_any_score=None)
    assert of.decide([[(0.97, "bird", 0.0001)], [], [], []], no_veto).keep
    people_only = of.RuleConfig(score_threshold=0.5, min_mask_area=0.01, classes=["person"], drop_any_score=0.95)
    birds = of.decide([[(0.99, "bird", 0.3)], [(0.99, "bird", 0.3)]], people_only)
    assert birds.keep and birds.n_detections == [0, 0] and birds.max_score == [0.0, 0.0]
    assert not of.decide([[(0.7, "person", 0.3)], []], people_only).keep  # 1 of 2 frames >= 0.5


def test_frames_of_and_apply_rule_floor():
    row = {"id": "c", "path": "p", "frame_times": [0.0, 0.4, 0.8], "det_frame": [2, 0, 2],
           "det_score": [0.9, 0.2, 0.6], "det_label": ["person", "cat", "dog"], "det_area": [0.1, 0.2, 0.3],
           "error": ""}
    assert of.frames_of(row) == [[(0.2, "cat", 0.2)], [], [(0.9, "person", 0.1), (0.6, "dog", 0.3)]]
    (out,) = of.apply_rule([row], of.RuleConfig(score_threshold=0.5, min_mask_area=0.0,
                                                drop_flagged_fraction=0.5, drop_any_score=None), floor=0.05)
    assert out["n_detections"] == [0, 0, 2] and out["keep"] and out["record_min_score"] == 0.05
    with pytest.raises(ConfigError, match="below the score floor"):
        of.apply_rule([row], of.RuleConfig(score_threshold=0.01), floor=0.05)
    (bad,) = of.apply_rule([{**row, "error": "x.mp4: cannot decode"}], of.RuleConfig(), floor=0.05)
    assert not bad["keep"] and bad["reason"] == "unreadable"


def test_sample_times():
    assert of.sample_times(5, 5.0, 3) == [0.0, 0.4, 0.8]
    assert of.sample_times(5, 5.0, 1) == [0.4]
    assert of.sample_times(3, 5.0, 8) == [0.0, 0.2, 0.4]


# ------------------------------------------------------------------------------ a tiny random Mask R-CNN

@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """maskrcnn_resnet50_fpn with random weights, saved as torchvision's COCO file is (a state dict)."""
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=64, max_size=64)
    path = tmp_path_factory.mktemp("weights") / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    torch.save(model.state_dict(), path)
    return path


def test_tiny_maskrcnn_loads_from_state_dict_and_detects(weights):
    import torch

    cfg = of.FilterConfig(weights=str(weights), **SETTINGS)
    det = of.build_detector(cfg, weights, Path)
    assert isinstance(det, detectors.TorchvisionMaskRCNN) and of.build_detector(cfg, weights, Path) is det
    frames = list(moving_frames(2, 64, 64))
    out = det.detect(frames)
    assert len(out) == 2 and all(0 < len(d) <= 3 for d in out)
    coco = set(det.categories)
    assert all(0 <= s <= 1 and lab in coco and 0 <= a <= 1 for d in out for s, lab, a in d)
    assert out == det.detect(frames)  # deterministic
    with pytest.raises(ConfigError, match="does not fit") as info:  # v1 weights in the v2 architecture
        detectors.TorchvisionMaskRCNN("maskrcnn_resnet50_fpn_v2", weights, torch.device("cpu"), min_size=32,
                                      max_size=32)
    assert weights.name in str(info.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_weights_files_that_are_not_state_dicts(tmp_path):
    import pickle

    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ConfigError, match="weights_only"):
        detectors.load_state_dict(tmp_path / "text.pth")
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump({"model": {"w": np.zeros(3)}, "__author__": "someone"}, f)
    with pytest.raises(ConfigError, match="obj.pkl"):
        detectors.load_state_dict(tmp_path / "obj.pkl")
    with pytest.raises(ConfigError, match="not found"):
        detectors.load_state_dict(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------ the stage

@pytest.fixture(scope="module")
def clip_rows(tmp_path_factory) -> list[dict]:
    """Clips as stage 15 writes them (5 frames, 64x64, 5 fps) plus one that does not decode."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(N_CLIPS):
        path = folder / f"clip-{i:02d}.mp4"
        if i == 3:
            path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))  # broken
        else:
            write_mp4(path, moving_frames(5, 64, 64, seed=i), fps=5.0)
        rows.append({"id": f"clip-{i:02d}", "path": str(path), "source": f"video-{i // 2}", "start": 0.0,
                     "fps": 5.0, "frames": 5, "size": 64, "caption": "", "split": ""})
    return rows


def make_run(tmp: Path, weights: Path | None, clip_rows: list[dict], rule: dict = KEEP_ALL) -> Path:
    run_dir = tmp / "run"
    write_rows(run_dir / "data" / "videos" / "clips.parquet", clip_rows, CLIP_COLUMNS)
    section = {"weights": str(weights) if weights else None, **SETTINGS, "batch_size": 3, "chunk_size": 2,
               "merge_timeout_s": 30, "rule": rule}
    cfg = tmp / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(run_dir), "ingest_videos": {}, "filter": section}))
    return cfg


def go(cfg_path: Path, ranks: RankInfo | None = None, **kw) -> dict:
    rc = load_config(cfg_path)
    ranks = ranks or RankInfo(0, 1, 0)
    return of.run(rc.section("filter", of.FilterConfig), rc.run_dir, rc.resolve, ranks=ranks, **kw)


def outputs(cfg_path: Path) -> dict[str, bytes]:
    out = load_config(cfg_path).run_dir / "data" / "videos"
    return {name: (out / name).read_bytes() for name in ("filter_stats.parquet", "kept.parquet")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, weights, clip_rows) -> tuple[Path, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("reference")
    cfg = make_run(tmp, weights, clip_rows)
    assert of.main(["--config", str(cfg)]) == 0
    return cfg, outputs(cfg)


def test_stage_records_statistics_and_keeps_by_rule(reference, clip_rows):
    cfg, _ = reference
    out = load_config(cfg).run_dir / "data" / "videos"
    stats = read_rows(out / "filter_stats.parquet")
    assert [r["id"] for r in stats] == [r["id"] for r in clip_rows]
    for r in stats:
        if r["id"] == "clip-03":
            assert not r["keep"] and r["reason"] == "unreadable" and "clip-03.mp4" in r["error"]
            continue
        assert r["frame_times"] == [0.0, 0.8] and r["error"] == ""
        assert len(r["n_detections"]) == len(r["max_score"]) == len(r["max_mask_area"]) == 2
        assert 0 < len(r["det_score"]) <= 6  # up to max_detections per sampled frame, floor 0
        assert r["keep"]  # KEEP_ALL: nothing reaches a score of 1.0
        expect = of.decide(of.frames_of(r), of.RuleConfig(**KEEP_ALL))
        assert (r["n_detections"], r["max_score"]) == (expect.n_detections, expect.max_score)
    kept = read_rows(out / "kept.parquet", CLIP_COLUMNS)
    assert [r["id"] for r in kept] == [r["id"] for r in clip_rows if r["id"] != "clip-03"]
    assert {r["object_filter"] for r in kept} == {"passed"}


def test_retune_changes_decisions_without_the_detector(reference, tmp_path, monkeypatch, clip_rows):
    cfg0, _ = reference
    shutil.copytree(load_config(cfg0).run_dir, tmp_path / "run")
    cfg = make_run(tmp_path, tmp_path / "gone.pth", clip_rows, rule=DROP_ALL)  # weights file does not exist
    monkeypatch.setattr(of, "build_detector", lambda *a, **k: pytest.fail("retune ran the detector"))
    chunks = tmp_path / "run" / "data" / "videos" / "filter_chunks"
    before = {p.name: p.read_bytes() for p in chunks.iterdir()}
    assert of.main(["--config", str(cfg), "--retune"]) == 0
    out = tmp_path / "run" / "data" / "videos"
    stats = read_rows(out / "filter_stats.parquet")
    old = {r["id"]: r for r in read_rows(load_config(cfg0).run_dir / "data/videos/filter_stats.parquet")}
    assert all(r["det_score"] == old[r["id"]]["det_score"] for r in stats)  # same detections
    assert [r["reason"] for r in stats] == ["objects_in_frames"] * 3 + ["unreadable", "objects_in_frames"]
    assert read_rows(out / "kept.parquet") == []
    assert {p.name: p.read_bytes() for p in chunks.iterdir()} == before
    cfg = make_run(tmp_path, tmp_path / "gone.pth", clip_rows, rule={**DROP_ALL, "score_threshold": -0.1})
    assert of.main(["--config", str(cfg), "--retune"]) == 1  # invalid rule: a clear error, exit 1


def test_no_weights_keeps_everything_marked_unfiltered(tmp_path, clip_rows, caplog):
    cfg = make_run(tmp_path, None, clip_rows)
    with caplog.at_level("INFO"):
        assert of.main(["--config", str(cfg)]) == 0
    assert "SKIPPED" in caplog.text and "filter.weights is not set" in caplog.text
    kept = read_rows(tmp_path / "run" / "data" / "videos" / "kept.parquet")
    assert [r["id"] for r in kept] == [r["id"] for r in clip_rows]
    assert {r["object_filter"] for r in kept} == {"unfiltered"}
    assert not (tmp_path / "run" / "data" / "videos" / "filter_stats.parquet").exists()
    # the video split is made here, by video: the two clips of a video are on one side
    sides = {}
    for r in kept:
        assert sides.setdefault(r["source"], r["split"]) == r["split"] and r["split"] in ("train", "test")


def test_two_ranks_give_the_one_rank_bytes(reference, tmp_path, weights, clip_rows):
    _, ref = reference
    cfg = make_run(tmp_path, weights, clip_rows)
    go(cfg, RankInfo(1, 2, 1))
    assert not (tmp_path / "run" / "data" / "videos" / "kept.parquet").exists()
    go(cfg, RankInfo(0, 2, 0))
    assert outputs(cfg) == ref


def test_sigkill_midway_then_rerun_is_byte_identical(reference, tmp_path, weights, clip_rows):
    _, ref = reference
    cfg = make_run(tmp_path, weights, clip_rows)
    chunks = tmp_path / "run" / "data" / "videos" / "filter_chunks"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.curation.object_filter", "--config", str(cfg)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (chunks / "chunk-000000.done").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stage ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "data" / "videos" / "kept.parquet").exists()
    assert len(list(chunks.glob("*.done"))) < 3  # killed midway (3 chunks)
    go(cfg)
    assert outputs(cfg) == ref
    assert not [p for p in (tmp_path / "run").rglob("*.tmp")]


def test_detectron2_backend_requested_but_not_installed(weights):
    # detectron2 has no wheel for this Python: asking for it must fail clearly, never fall back silently
    try:
        import detectron2  # noqa: F401
    except ImportError:
        cfg = of.FilterConfig(weights=str(weights), backend="detectron2", detectron2_config="mask_rcnn.yaml")
        with pytest.raises(ConfigError, match="detectron2 is not installed"):
            of.build_detector(cfg, weights, Path)
    else:
        cfg = of.FilterConfig(weights=str(weights), backend="detectron2")
        with pytest.raises(ConfigError, match="detectron2_config"):
            of.build_detector(cfg, weights, Path)

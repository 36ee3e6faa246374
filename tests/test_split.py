"""The deterministic train/test split: sizes from counts or fractions, stable under reordering."""

from __future__ import annotations

import random

import pytest
import yaml

from pipeline.config import ConfigError, from_dict
from pipeline.curation import split
from pipeline.formats.manifest import IMAGE_COLUMNS, read_rows, stable_id, write_rows


def ids(n: int) -> list[str]:
    return [stable_id("img", f"lhq_1024_jpg/{i:07d}.jpg") for i in range(n)]


def test_lhqc_default_is_exactly_85k_train_5k_test_and_order_free():
    all_ids = ids(90_000)
    labels = split.assign(all_ids, split.SplitConfig())
    assert labels.count("train") == 85_000 and labels.count("test") == 5_000
    shuffled = all_ids[:]
    random.Random(0).shuffle(shuffled)
    again = dict(zip(shuffled, split.assign(shuffled, split.SplitConfig())))
    assert again == dict(zip(all_ids, labels))  # an item's side depends on its id alone


def test_fractions_and_explicit_counts():
    some = ids(1000)
    labels = split.assign(some, split.SplitConfig(test_fraction=0.1))
    assert (labels.count("train"), labels.count("test")) == (900, 100)
    labels = split.assign(some, split.SplitConfig(test_fraction=0.1, train_fraction=0.5))
    assert (labels.count("train"), labels.count("test"), labels.count("unused")) == (500, 100, 400)
    assert split.split_sizes(7, split.SplitConfig(test_fraction=0.5)) == (3, 4)  # 3.5 rounds half up
    labels = split.assign(ids(20), split.SplitConfig(test_count=5, train_count=10))
    assert (labels.count("train"), labels.count("test"), labels.count("unused")) == (10, 5, 5)
    # the test set is the head of the hash ranking: a bigger test set contains the smaller one
    small = {i for i, s in zip(some, split.assign(some, split.SplitConfig(test_count=50))) if s == "test"}
    big = {i for i, s in zip(some, split.assign(some, split.SplitConfig(test_count=80))) if s == "test"}
    assert small < big
    other_salt = split.assign(some, split.SplitConfig(test_count=50, salt="other"))
    assert {i for i, s in zip(some, other_salt) if s == "test"} != small


def test_bad_sizes_are_clear_errors():
    with pytest.raises(split.SplitError, match="leaves no training images out of 40"):
        split.assign(ids(40), split.SplitConfig())
    with pytest.raises(split.SplitError, match="do not fit in 20"):
        split.assign(ids(20), split.SplitConfig(test_count=5, train_count=16))
    with pytest.raises(split.SplitError, match="not unique"):
        split.assign(ids(3) * 2, split.SplitConfig(test_count=1))
    with pytest.raises(ConfigError, match="counts or as fractions"):
        from_dict(split.SplitConfig, {"test_count": 5, "train_fraction": 0.5})
    with pytest.raises(ConfigError, match=r"test_fraction must be in \[0, 1\]"):
        from_dict(split.SplitConfig, {"test_fraction": 1.5})


def test_split_cli_writes_the_manifest_atomically_and_repeatably(tmp_path):
    rows = [{"id": i, "path": f"/x/{k}.jpg", "source": "folder:/x", "width": 64, "height": 64,
             "crop": [0, 0, 64, 64], "size": 64, "caption": "c", "split": ""} for k, i in enumerate(ids(30))]
    manifest = tmp_path / "run/data/images/manifest.parquet"
    write_rows(manifest, rows, IMAGE_COLUMNS)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "caption": {"split": {"test_count": 6}}}))
    assert split.main(["--config", str(cfg)]) == 0
    out = read_rows(manifest, IMAGE_COLUMNS)
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # order kept
    assert sum(r["split"] == "test" for r in out) == 6 and sum(r["split"] == "train" for r in out) == 24
    first = manifest.read_bytes()
    assert split.main(["--config", str(cfg)]) == 0
    assert manifest.read_bytes() == first
    assert not [p for p in manifest.parent.iterdir() if p.name.endswith(".tmp")]
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "caption": {"split": {"test_count": 60}}}))
    assert split.main(["--config", str(cfg)]) == 1
    assert manifest.read_bytes() == first  # a failed split leaves the manifest as it was


def test_video_split_is_by_video_deterministic_and_disjoint():
    # 200 videos with 1 to 4 clips each; clip rows as stage 15 writes them (video_id = the source video)
    rng = random.Random(3)
    clips = [{"id": f"clip-{v}-{k}", "video_id": stable_id("vid", f"pexels/{v}"), "source": f"https://x/{v}.mp4"}
             for v in range(200) for k in range(rng.randint(1, 4))]
    cfg = split.SplitConfig(test_fraction=0.1, salt="lhqv")
    rows = split.apply_by_video(clips, cfg)
    side = {}
    for r in rows:  # every clip of a video is on its video's side: no test clip shares a training video
        assert side.setdefault(r["video_id"], r["split"]) == r["split"]
    assert list(side.values()).count("test") == 20 and list(side.values()).count("train") == 180
    # deterministic: the same labels for any row order, and from the ids alone
    shuffled = clips[:]
    rng.shuffle(shuffled)
    again = {r["id"]: r["split"] for r in split.apply_by_video(shuffled, cfg)}
    assert again == {r["id"]: r["split"] for r in rows}
    # a bigger test set contains the smaller one; another salt gives another split
    bigger = {r["video_id"] for r in split.apply_by_video(clips, split.SplitConfig(test_count=40, salt="lhqv"))
              if r["split"] == "test"}
    assert {v for v, s in side.items() if s == "test"} < bigger
    other = {r["id"]: r["split"] for r in split.apply_by_video(clips, split.SplitConfig(test_fraction=0.1))}
    assert other != again
    # older clip manifests without video_id fall back to the source
    legacy = split.apply_by_video([{k: v for k, v in c.items() if k != "video_id"} for c in clips], cfg)
    for r in legacy:
        assert side.setdefault(r["source"], r["split"]) == r["split"]

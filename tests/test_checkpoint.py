"""Checkpoint bookkeeping without DeepSpeed: the latest pointer, stale folders, pruning, the resume check,
random-generator state. (Real DeepSpeed save/load/resume is exercised in test_train_deepspeed.py.)"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from model.config import preset
from pipeline import atomic
from pipeline.training.checkpoint import (
    LATEST,
    META_NAME,
    CheckpointError,
    CheckpointStore,
    capture_rng,
    check_compatible,
    compatibility_record,
    restore_rng,
    step_of,
    tag_for,
)


def fake_checkpoint(store: CheckpointStore, step: int, complete: bool = True) -> str:
    """A folder shaped like a saved checkpoint; `complete` writes the marker, as the last save step does."""
    tag = tag_for(step)
    (store.folder / tag).mkdir(parents=True)
    (store.folder / tag / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        atomic.write_json(store.folder / tag / META_NAME, {"global_steps": step})
    return tag


def test_latest_pointer_names_only_complete_checkpoints(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep_last=2)
    assert store.latest_tag() is None
    tag = fake_checkpoint(store, 8)
    atomic.write_text(store.folder / LATEST, tag)
    assert store.latest_tag() == "global_step8" and step_of(tag) == 8
    fake_checkpoint(store, 12, complete=False)
    atomic.write_text(store.folder / LATEST, tag_for(12))
    with pytest.raises(CheckpointError, match="global_step12/train_meta.json is missing"):
        store.latest_tag()


def test_a_save_interrupted_before_its_marker_leaves_the_previous_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep_last=3)
    atomic.write_text(store.folder / LATEST, fake_checkpoint(store, 4))
    fake_checkpoint(store, 8, complete=False)  # crashed while DeepSpeed wrote its files
    fake_checkpoint(store, 12)  # crashed after the marker, before the pointer moved
    (store.folder / ".latest.abc.tmp").write_text("global_step12")  # a pointer write cut short
    assert store.latest_tag() == "global_step4"
    assert store.read_meta("global_step4") == {"global_steps": 4}
    gone = store.remove_stale()
    assert sorted(gone) == ["global_step12", "global_step8"]
    assert sorted(p.name for p in store.folder.iterdir()) == ["global_step4", LATEST]


def test_prune_keeps_the_newest_and_the_latest(tmp_path):
    store = CheckpointStore(tmp_path / "ck", keep_last=2)
    for step in (4, 8, 12, 16):
        fake_checkpoint(store, step)
    atomic.write_text(store.folder / LATEST, tag_for(16))
    assert store.prune() == ["global_step4", "global_step8"]
    assert store.complete_tags() == ["global_step12", "global_step16"]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path / "x", keep_last=0)


def test_resume_check_lists_every_contradiction():
    cfg = preset("tiny")
    train = {"global_batch": 256, "loss_region": "patch", "code_grid": [1, 64, 64], "zero_stage": 2}
    saved = compatibility_record(cfg.to_dict(), train)
    check_compatible(saved, compatibility_record(cfg.replace(checkpoint_blocks=True).to_dict(), train), "ck")
    other = compatibility_record(cfg.replace(d_model=128, expand=(1, 1, 0)).to_dict(), {**train, "zero_stage": 3})
    with pytest.raises(CheckpointError) as e:
        check_compatible(saved, other, "ck/global_step8")
    msg = str(e.value)
    assert "ck/global_step8: the run's config contradicts the checkpoint" in msg
    assert "model.d_model: checkpoint has 64, this run has 128" in msg
    assert "model.expand: checkpoint has [2, 2, 0], this run has [1, 1, 0]" in msg
    assert "train.zero_stage: checkpoint has 2, this run has 3" in msg
    assert "model.checkpoint_blocks" not in msg
    # the number of ranks may change (pipeline.training.universal): older checkpoints recorded it, it is ignored
    check_compatible({**saved, "train.world_size": 8}, saved, "ck")


def test_random_state_round_trips_through_a_weights_only_load(tmp_path):
    gen = torch.Generator().manual_seed(11)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = capture_rng({"pnar": gen})
    torch.save(state, tmp_path / "rank00000.pt")
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    gen.manual_seed(99)
    restore_rng(torch.load(tmp_path / "rank00000.pt", weights_only=True), {"pnar": gen})
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.rand(2, generator=gen).tolist())
    assert first == again

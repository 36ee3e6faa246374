"""Training data: token-set checks, the distributed sampler, caption dropping, batch loading (no DeepSpeed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import preset
from pipeline.formats.shards import TokenSet, TokenSetMeta, merge_index, shard_name, write_meta, write_shard
from pipeline.formats.text_tokenizer import build
from pipeline.training.data import (
    DataError,
    DataPosition,
    GlobalBatchSampler,
    TrainData,
    check_token_set,
    text_drop_decisions,
)

WORDS = ["blue", "misty", "lake", "mountain", "sunset", "forest", "snow", "river", "calm", "cloud"]


def make_token_set(folder: Path, n: int = 16, grid=(1, 8, 8), vocab: int = 256, shards: int = 2,
                   seed: int = 0) -> Path:
    """A small finished token set in the pipeline.formats.shards format: smooth code ramps plus captions."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = TokenSetMeta(grid=tuple(grid), vocab_size=vocab, downsample=16, vqgan_sha256="0" * 64)
    write_meta(folder, meta)
    rng = np.random.default_rng(seed)
    f, h, w = grid
    per = -(-n // shards)
    for s in range(shards):
        k = min(per, n - s * per)
        base = rng.integers(0, vocab, size=(k, 1, 1, 1))
        codes = (base + np.arange(h)[None, None, :, None] * 3 + np.arange(w)[None, None, None, :]
                 + np.arange(f)[None, :, None, None] * 7) % vocab
        rows = [{"id": f"s{s}_{i}", "caption": " ".join(rng.choice(WORDS, 4)), "source": "test", "crop": []}
                for i in range(k)]
        write_shard(folder, shard_name(0, s), codes, rows, meta)
    merge_index(folder)
    return folder


@pytest.fixture(scope="module")
def token_set(tmp_path_factory) -> Path:
    return make_token_set(tmp_path_factory.mktemp("tokens"), n=24)


def test_ranks_split_each_global_batch_exactly(token_set):
    n, g = 24, 8
    one = GlobalBatchSampler(n, g, micro_batch=4, accumulation=2, rank=0, world=1, seed=5)
    two = [GlobalBatchSampler(n, g, micro_batch=2, accumulation=2, rank=r, world=2, seed=5) for r in range(2)]
    assert one.batches_per_epoch == 3
    seen = []
    for epoch in range(2):
        for b in range(one.batches_per_epoch):
            pos = DataPosition(epoch, b)
            single = np.concatenate(one.micro_batches(pos))
            split = np.concatenate([np.concatenate(s.micro_batches(pos)) for s in two])
            assert single.tolist() == split.tolist()  # same items, same order, whatever the rank count
            assert all(len(m) == 2 for s in two for m in s.micro_batches(pos))
            seen.append(single)
    first_epoch = np.concatenate(seen[:3])
    assert sorted(first_epoch.tolist()) == list(range(24))  # each item once per epoch
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))  # reshuffled per epoch
    again = GlobalBatchSampler(n, g, 4, 2, 0, 1, seed=5)
    assert np.array_equal(again.global_items(DataPosition(1, 2)), one.global_items(DataPosition(1, 2)))
    with pytest.raises(ValueError, match="global batch 8 != micro batch 4 x accumulation 1 x ranks 1"):
        GlobalBatchSampler(n, g, 4, 1, 0, 1, seed=5)


def test_data_position_rolls_over_epochs():
    p = DataPosition(0, 0)
    for _ in range(3):
        p = p.advanced(3)
    assert p == DataPosition(1, 0)
    assert DataPosition.from_dict(DataPosition(4, 2).to_dict()) == DataPosition(4, 2)


def test_caption_drop_depends_on_position_not_rank():
    a = text_drop_decisions(1, DataPosition(2, 3), 4096, 0.25)
    b = text_drop_decisions(1, DataPosition(2, 3), 4096, 0.25)
    c = text_drop_decisions(1, DataPosition(2, 4), 4096, 0.25)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.2 < a.mean() < 0.3
    assert not text_drop_decisions(1, DataPosition(0, 0), 64, 0.0).any()


def test_train_data_loads_micro_batches_with_captions(token_set):
    ts = TokenSet(token_set)
    tok = build(ts.captions, "bpe", 512)
    sampler = GlobalBatchSampler(len(ts), 8, 4, 2, 0, 1, seed=0)
    data = TrainData(ts, sampler, tok, text_len=6, text_drop=0.5, seed=0, device=torch.device("cpu"))
    pos = DataPosition(0, 1)
    micro = data.load(pos)
    assert len(micro) == 2
    drops = text_drop_decisions(0, pos, 8, 0.5)
    for a, mb in enumerate(micro):
        assert mb.codes.shape == (4, 1, 8, 8) and mb.codes.dtype == torch.int64
        assert mb.text_ids.shape == (4, 6) and mb.text_mask.dtype == torch.bool
        idx = sampler.micro_batches(pos)[a]
        for row, i in enumerate(idx):
            assert np.array_equal(mb.codes[row].numpy(), ts.codes(int(i)))
            dropped = drops[a * 4 + row]
            assert bool(mb.text_mask[row].any()) == (not dropped)
            if dropped:
                assert int(mb.text_ids[row].abs().sum()) == 0
            else:
                want, _ = tok.encode([ts.captions[int(i)]], 6)
                assert torch.equal(mb.text_ids[row], want[0])


def test_check_token_set_accepts_a_good_set(token_set):
    ts, grid = check_token_set(token_set, preset("tiny"), global_batch=8)
    assert len(ts) == 24 and (grid.H, grid.W, grid.F) == (2, 2, 1)


def assert_check_rejects(folder: Path, match: str, global_batch: int) -> None:
    """The up-front token-set check must refuse `folder` with a DataError matching `match`."""
    with pytest.raises(DataError, match=match):
        check_token_set(folder, preset("tiny"), global_batch)


def test_missing_shard_is_named(tmp_path):
    folder = make_token_set(tmp_path / "t")
    (folder / f"{shard_name(0, 1)}.npy").unlink()
    assert_check_rejects(folder, rf"{shard_name(0, 1)}\.npy: listed in index.parquet but missing", 4)


def test_truncated_shard_is_named(tmp_path):
    folder = make_token_set(tmp_path / "t")
    path = folder / f"{shard_name(0, 0)}.npy"
    path.write_bytes(path.read_bytes()[:-100])
    assert_check_rejects(folder, rf"{shard_name(0, 0)}\.npy: truncated", 4)


def test_codebook_larger_than_model_vocab(tmp_path):
    folder = make_token_set(tmp_path / "t", vocab=1024)
    assert_check_rejects(folder, "token ids outside the codebook.*1024 codes.*vocab_size is 256", 4)


def test_codebook_smaller_than_model_vocab(tmp_path):
    folder = make_token_set(tmp_path / "t", vocab=64)
    assert_check_rejects(folder, "VQGAN with 64 codes but the model's vocab_size is 256; set model.vocab_size: 64", 4)


def test_grid_that_does_not_divide_into_patches(tmp_path):
    folder = make_token_set(tmp_path / "t", grid=(1, 8, 10))
    assert_check_rejects(folder, r"meta.json: code grid f x h x w = 1 x 8 x 10 does not divide", 4)


def test_fewer_items_than_a_global_batch(tmp_path):
    folder = make_token_set(tmp_path / "t", n=6)
    assert_check_rejects(folder, "6 items, fewer than one global batch of 8", 8)


def test_corrupted_token_id_fails_at_load_naming_file_and_row(tmp_path):
    folder = make_token_set(tmp_path / "t", n=8, shards=1)
    arr = np.load(folder / f"{shard_name(0, 0)}.npy", mmap_mode="r+")
    arr[5, 0, 2, 3] = 300  # beyond the 256-code book
    arr.flush()
    del arr
    ts, _ = check_token_set(folder, preset("tiny"), 8)  # the up-front check reads only each shard's last row
    data = TrainData(ts, GlobalBatchSampler(8, 8, 8, 1, 0, 1, seed=0), None, 4, 0.0, 0, torch.device("cpu"))
    with pytest.raises(DataError, match=r"npy row 5 \(id s0_5\): token ids outside the codebook \[0, 256\)"):
        data.load(DataPosition(0, 0))

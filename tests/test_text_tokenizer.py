"""The offline caption tokenizer: learned from captions, deterministic, pad id 0, byte fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.formats.text_tokenizer import (
    PAD_ID,
    TextTokenizer,
    TokenizerError,
    build,
    byte_level,
    ensure,
    train_bpe,
)

REPO = Path(__file__).resolve().parents[1]
CAPTIONS = [f"a {c} {t} lake under {s} clouds" for c in ("blue", "green", "misty", "calm", "wide")
            for t in ("mountain", "forest", "valley") for s in ("white", "grey", "pink", "storm")]

TRAIN_AND_PRINT = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from tests.test_text_tokenizer import CAPTIONS
from pipeline.formats.text_tokenizer import train_bpe
print(hashlib.sha256(train_bpe(CAPTIONS, 200).to_json().encode()).hexdigest())
"""


def test_bpe_is_deterministic_across_processes():
    here = train_bpe(CAPTIONS, 200).sha256
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "RAYON_NUM_THREADS": "2"}
        r = subprocess.run([sys.executable, "-c", TRAIN_AND_PRINT, str(REPO)], env=env, capture_output=True,
                           text=True, timeout=120, check=True)
        outs.append(r.stdout.strip())
    assert outs == [here, here]


def test_encode_pads_truncates_and_masks():
    tok = train_bpe(CAPTIONS, 200)
    assert tok.tokenizer.token_to_id("[PAD]") == PAD_ID and tok.vocab_size <= 200
    ids, mask = tok.encode(["a blue lake", "", "A BLUE LAKE", CAPTIONS[0] * 5], 8)
    assert ids.shape == (4, 8) and ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert torch.equal(mask, ids != 0)
    assert mask[0].sum() > 0 and not mask[0, -1] and not mask[1].any()
    assert torch.equal(ids[0], ids[2])  # normalised to lower case
    assert mask[3].all()  # truncated to max_len
    assert tok.decode(tok.ids("a blue lake")) == "a blue lake"
    unk = tok.ids("zebra")  # never-seen characters map to [UNK], never to padding
    assert 1 in unk and PAD_ID not in unk


def test_byte_level_fallback():
    tok = build(["", ""], "bpe", 512)  # no caption text to learn from
    assert tok.kind == "bytes" and tok.vocab_size == 257
    assert tok.ids("ab") == [ord("a") + 1, ord("b") + 1]
    assert tok.decode(tok.ids("wide lake, €5")) == "wide lake, €5"
    ids, mask = tok.encode(["€"], 4)
    assert ids[0].tolist() == [0xE2 + 1, 0x82 + 1, 0xAC + 1, 0] and mask[0].tolist() == [True, True, True, False]
    with pytest.raises(TokenizerError, match="needs text_vocab_size >= 257"):
        build(CAPTIONS, "bytes", 100)


def test_ensure_saves_once_and_reloads(tmp_path):
    path = tmp_path / "train" / "text_tokenizer.json"
    tok, created = ensure(path, CAPTIONS, "bpe", 300)
    assert created and path.is_file()
    again, created = ensure(path, ["something else entirely"], "bpe", 300)
    assert not created and again.sha256 == tok.sha256
    loaded = TextTokenizer.load(path)
    assert loaded.kind == "bpe" and loaded.ids("calm valley") == tok.ids("calm valley")
    byte_level().save(tmp_path / "bytes.json")
    assert TextTokenizer.load(tmp_path / "bytes.json").kind == "bytes"
    with pytest.raises(TokenizerError, match="text tokenizer has .* ids but the model's text_vocab_size is 10"):
        ensure(path, CAPTIONS, "bpe", 10)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="missing"):
        TextTokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json: not a tokenizers JSON file"):
        TextTokenizer.load(tmp_path / "bad.json")

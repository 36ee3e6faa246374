"""The caption tokenizer of the text encoder: trained offline from the training captions, never downloaded.

Two kinds, both stored as one Hugging Face `tokenizers` JSON file (run_dir/train/text_tokenizer.json,
copied into the export folder), so every consumer loads them the same way:

- "bpe" (default): byte-pair encoding learned from the training captions. NFKC + lower-case
  normalisation, Metaspace pre-tokenisation (words keep a boundary marker), `[PAD]` = id 0 (the text encoder's pad id,
  masked out), `[UNK]` = id 1 for characters never seen in training. The vocabulary is at most the
  model's `text_vocab_size`. Training is deterministic: the same captions in the same order give the
  same file (BPE merges break count ties by pair order; there is no sampling).
- "bytes": the fallback when there are no captions to learn from, or by choice: one token per UTF-8
  byte (id = byte value + 1, pad 0), written as a merge-free BPE over the byte-level alphabet. Needs a
  `text_vocab_size` of at least 257.

Encoding truncates to `max_len` tokens and pads with id 0 to exactly `max_len`, so every batch has the
same shape; the mask is True on real tokens. An empty caption gives an all-False mask row, which the
text encoder treats like a dropped caption (it always attends to its learned null token).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from pipeline import atomic
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID = 0
KINDS = ("bpe", "bytes")
BYTE_VOCAB = 257  # pad + 256 bytes


class TokenizerError(PipelineError, RuntimeError):
    """A tokenizer file that is missing, malformed or does not fit the model."""


class TextTokenizer:
    """A `tokenizers.Tokenizer` with the pipeline's conventions (pad id 0, fixed-length batches)."""

    def __init__(self, tokenizer: Tokenizer, kind: str):
        if kind not in KINDS:
            raise TokenizerError(f"unknown tokenizer kind {kind!r}; known: {list(KINDS)}")
        if tokenizer.token_to_id(PAD) != PAD_ID:
            raise TokenizerError(f"tokenizer's pad token {PAD} must have id {PAD_ID}, "
                                 f"has {tokenizer.token_to_id(PAD)}")
        self.tokenizer = tokenizer
        self.kind = kind

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        atomic.write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: text tokenizer file missing")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise TokenizerError(f"{path}: not a tokenizers JSON file ({e})") from e
        kind = "bytes" if isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel) else "bpe"
        try:
            return cls(tok, kind)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from e

    def check_fits(self, text_vocab_size: int, where: str = "") -> None:
        if self.vocab_size > text_vocab_size:
            raise TokenizerError(f"{where}text tokenizer has {self.vocab_size} ids but the model's "
                                 f"text_vocab_size is {text_vocab_size}")

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text or "", add_special_tokens=False).ids

    def encode(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ids LongTensor [B, max_len] (pad 0) and mask BoolTensor [B, max_len]."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        ids = torch.zeros(len(texts), max_len, dtype=torch.long)
        encoded = self.tokenizer.encode_batch([t or "" for t in texts], add_special_tokens=False)
        for row, enc in enumerate(encoded):
            seq = enc.ids[:max_len]
            if seq:
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return ids, ids != PAD_ID

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i != PAD_ID])


def train_bpe(captions: Iterable[str], vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """Learn a BPE vocabulary (at most vocab_size ids, pad and unk included) from the captions."""
    if vocab_size < 3:
        raise TokenizerError(f"a BPE vocabulary needs at least 3 ids, got text_vocab_size {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Metaspace keeps word boundaries as a visible marker, so decode() gives back the spaces.
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[PAD, UNK])
    tok.train_from_iterator([c for c in captions if c], trainer=trainer)
    return TextTokenizer(tok, "bpe")


def byte_level() -> TextTokenizer:
    """One token per UTF-8 byte: ids 1..256, pad 0; no training, no unknown tokens."""
    vocab = {PAD: PAD_ID, **{ch: b + 1 for b, ch in enumerate(_byte_symbols())}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return TextTokenizer(tok, "bytes")


def _byte_symbols() -> list[str]:
    """The printable stand-in character of each byte value 0..255 under the ByteLevel pre-tokenizer.

    Printable Latin-1 bytes stand for themselves; the others are shifted past 255, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    keep, shifted, out = set(printable), 0, []
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + shifted))
            shifted += 1
    return out


def build(captions: list[str], kind: str, vocab_size: int, min_frequency: int = 2) -> TextTokenizer:
    """The tokenizer of `kind` for these captions (bytes when there is no caption text at all)."""
    if kind not in KINDS:
        raise TokenizerError(f"unknown text tokenizer kind {kind!r}; known: {list(KINDS)}")
    if kind == "bpe" and not any(c for c in captions):
        log.warning("no caption text to learn a BPE vocabulary from; using the byte-level tokenizer")
        kind = "bytes"
    if kind == "bytes":
        if vocab_size < BYTE_VOCAB:
            raise TokenizerError(f"the byte-level tokenizer needs text_vocab_size >= {BYTE_VOCAB}, "
                                 f"the model has {vocab_size}")
        return byte_level()
    return train_bpe(captions, vocab_size, min_frequency)


def ensure(path: str | Path, captions: list[str], kind: str, vocab_size: int,
           min_frequency: int = 2) -> tuple[TextTokenizer, bool]:
    """Load the tokenizer at `path`, or build it from `captions` and save it; (tokenizer, created)."""
    path = Path(path)
    if path.is_file():
        tok = TextTokenizer.load(path)
        tok.check_fits(vocab_size, f"{path}: ")
        return tok, False
    tok = build(captions, kind, vocab_size, min_frequency)
    tok.check_fits(vocab_size, f"{path}: ")
    tok.save(path)
    log.info("text tokenizer (%s, %d ids) learned from %d captions -> %s", tok.kind, tok.vocab_size,
             sum(1 for c in captions if c), path)
    return tok, True

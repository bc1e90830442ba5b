"""Caption tokenizer: a byte-level BPE trained on the training captions with HF ``tokenizers``
(or, for worldwide captions, a SentencePiece-style unigram LM: ``--tokenizer-kind unigram``).

Why not CLIP's own 49,152-merge BPE vocabulary: no package installed here ships it (open_clip's
``bpe_simple_vocab_16e6.txt.gz`` comes with open_clip, which needs torchvision), and a BPE
trained on the shards' own captions fits a from-scratch run. It is byte-level, so no caption
is ever out of vocabulary. Text is cleaned as CLIP cleans it (ftfy, HTML unescape, whitespace
collapsed, lower-cased). Layout of a row: ``SOT tokens... EOT PAD PAD ...`` with PAD = 0 (the
model pools the last non-pad position); a caption longer than the context is truncated and
its last position is EOT, as open_clip does.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import ftfy
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, SOT, EOT = "<pad>", "<start_of_text>", "<end_of_text>"
SPECIAL_TOKENS = [PAD, SOT, EOT]  # ids 0, 1, 2 in this order
UNK = "<unk>"  # id 3 of a unigram tokenizer (a byte-level BPE has no unknown)
DEFAULT_CONTEXT_LENGTH = 77

_WHITESPACE = re.compile(r"\s+")


def clean_caption(text: str) -> str:
    """CLIP's text cleaning: fix mojibake (ftfy), unescape HTML twice, collapse whitespace."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _WHITESPACE.sub(" ", text).strip()


CHARACTER_COVERAGE = 0.9995  # share of character occurrences the unigram's alphabet covers (SentencePiece's default)


def covered_characters(texts: list[str], coverage: float, limit: int) -> set[str]:
    """The most frequent characters of ``texts`` (NFKC-normalised, as the tokenizer does) that
    together cover ``coverage`` of all character occurrences, at most ``limit`` of them: the rest
    are left out of a unigram tokenizer's training, so they map to ``<unk>`` (SentencePiece's
    ``character_coverage``; a CJK pool has more distinct characters than a small vocabulary)."""
    import collections

    counts = collections.Counter(ch for t in texts for ch in t)
    counts.pop(" ", None)
    total = sum(counts.values())
    kept, seen = set(), 0
    for ch, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(kept) >= limit or (total and seen / total >= coverage):
            break
        kept.add(ch)
        seen += n
    return kept


class CaptionTokenizer:
    """Callable: a list of captions -> (N, context_length) int64 token ids."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH):
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != [0, 1, 2]:
            raise ValueError(f"tokenizer special tokens {SPECIAL_TOKENS} must have ids 0,1,2, got {ids}")
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id = ids

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        kind: str = "bpe",
    ) -> "CaptionTokenizer":
        """Train a tokenizer of at most ``vocab_size`` ids on ``captions``: ``kind="bpe"`` a
        lower-cased byte-level BPE (specials and the 256-byte alphabet included; English, as
        CLIP's); ``kind="unigram"`` a cased SentencePiece-style unigram LM (:meth:`train_unigram`)
        for worldwide captions."""
        if kind == "unigram":
            return cls.train_unigram(captions, vocab_size, context_length)
        if kind != "bpe":
            raise ValueError(f"tokenizer kind must be 'bpe' or 'unigram', got {kind!r}")
        if vocab_size < len(SPECIAL_TOKENS) + 256:
            raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256}, got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((clean_caption(c) for c in captions), trainer=trainer)
        return cls(tok, context_length)

    @classmethod
    def train_unigram(cls, captions: Iterable[str], vocab_size: int,
                      context_length: int = DEFAULT_CONTEXT_LENGTH) -> "CaptionTokenizer":
        """A multilingual tokenizer for worldwide captions (MetaCLIP 2 used XLM-V's, a
        SentencePiece unigram LM): HF ``tokenizers``' unigram model, NFKC-normalised, cased,
        pieces marked by SentencePiece's metaspace, so a script written without spaces (Chinese,
        Japanese, Thai) is segmented by the model itself, never left as one token. Characters
        never seen in training map to ``<unk>`` (id 3); the specials keep ids 0, 1, 2."""
        if vocab_size < len(SPECIAL_TOKENS) + 8:
            raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 8}, got {vocab_size}")
        texts = [unicodedata.normalize("NFKC", clean_caption(c)) for c in captions]
        alphabet = covered_characters(texts, CHARACTER_COVERAGE, max(8, vocab_size // 2))
        rare = re.compile("[^" + re.escape("".join(sorted(alphabet))) + "]") if alphabet else None
        if rare is not None:  # SentencePiece's character coverage: the rarest characters stay <unk>
            texts = [rare.sub(" ", t) for t in texts]
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, UNK],
                                          unk_token=UNK, show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, context_length)

    @classmethod
    def from_str(cls, json_str: str, context_length: int = DEFAULT_CONTEXT_LENGTH) -> "CaptionTokenizer":
        """Load from the JSON string written by :meth:`to_str`."""
        return cls(Tokenizer.from_str(json_str), context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH) -> "CaptionTokenizer":
        """Load a ``tokenizer.json`` saved by :meth:`save`."""
        try:
            return cls(Tokenizer.from_file(str(path)), context_length)
        except Exception as e:  # tokenizers raises a bare Exception on a bad file
            raise ValueError(f"{path}: not a tokenizer.json ({e})") from e

    def to_str(self) -> str:
        """The tokenizer as a JSON string (small; travels inside configs and checkpoints)."""
        return self.tokenizer.to_str()

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (a local path or URI), atomically."""
        from storage.files import atomic_write

        text = self.tokenizer.to_str(pretty=True).encode()
        atomic_write(str(path), lambda f: f.write(text))

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (the model's vocab_size must be >= this)."""
        return self.tokenizer.get_vocab_size()

    def __call__(self, captions: list[str]) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch(
            [clean_caption(c) for c in captions], add_special_tokens=False
        )
        out = torch.full((len(captions), self.context_length), self.pad_id, dtype=torch.long)
        for row, enc in enumerate(encodings):
            ids = [self.sot_id, *enc.ids[: self.context_length - 2], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def token_counts(self, captions: list[str]) -> list[int]:
        """BPE tokens per caption, without SOT/EOT and before truncation to the context."""
        encodings = self.tokenizer.encode_batch([clean_caption(c) for c in captions], add_special_tokens=False)
        return [len(enc.ids) for enc in encodings]

    def decode(self, ids: torch.Tensor) -> str:
        """Caption text of one row of ids (specials dropped)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()

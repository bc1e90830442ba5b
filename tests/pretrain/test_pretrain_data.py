"""The WebDataset training stream: equal batch shapes, and bad samples / shards skipped and
counted (read == decoded + rejected), never fatal."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pretrain.data import make_train_pipeline, read_captions, train_batches


def test_bad_samples_and_shards_are_skipped_and_counted(bad_shards, tokenizer):
    pipeline = make_train_pipeline(bad_shards, tokenizer, image_size=32, batch_size=4,
                                   resample=False, shuffle_buffer=1)
    # 3 batches per pass over the 12 good samples; the 7th batch (3rd data epoch) carries the
    # counts of the whole 2nd pass, whose bad samples come after its last good one
    batches = list(itertools.islice(train_batches(pipeline, num_workers=0), 7))
    assert all(b.images.shape == (4, 3, 32, 32) and b.texts.shape == (4, 77) for b in batches)
    totals = Counter()
    for b in batches:
        totals.update(b.counts)
    rejected = {k: totals[k] for k in ("corrupt_image", "missing_text", "missing_image", "bad_text")}
    assert totals["decoded"] == 28
    assert rejected == {"corrupt_image": 2, "missing_text": 2, "missing_image": 2, "bad_text": 2}
    assert totals["read"] == totals["decoded"] + sum(rejected.values())
    # every data epoch reads both shards once, in its own order: epochs 0 and 1 whole, and
    # epoch 2 (seed 0) reads the broken 00001.tar first
    assert totals["unreadable_shard"] == 3


def test_resampled_stream_gives_full_batches_forever(tiny_shards, tokenizer):
    pipeline = make_train_pipeline(tiny_shards, tokenizer, image_size=32, batch_size=48, seed=3)
    batches = list(itertools.islice(train_batches(pipeline, num_workers=0), 12))  # > 512 samples
    assert [tuple(b.images.shape) for b in batches] == [(48, 3, 32, 32)] * 12
    assert sum(b.counts["decoded"] for b in batches) >= 12 * 48


def test_all_bad_data_fails_with_a_clear_error(tmp_path, tokenizer):
    (tmp_path / "00000.tar").write_bytes(b"garbage" * 100)
    pipeline = make_train_pipeline(str(tmp_path / "00000.tar"), tokenizer, 32, 4)
    with pytest.raises(RuntimeError, match="in a row gave no sample"):
        next(train_batches(pipeline, num_workers=0))


def test_read_captions(tiny_shards, tmp_path):
    captions = read_captions(tiny_shards, 50)
    assert len(captions) == 50 and all(isinstance(c, str) and c for c in captions)
    with pytest.raises(ValueError, match="no captions"):
        read_captions(str(tmp_path / "missing.tar"), 5)


def test_pipeline_and_loader_workers_must_agree(tiny_shards, tokenizer):
    """Each loader worker reads its own slot: a pipeline made for the training process, run in 2
    workers, would have both read the same stream (every sample twice): an error instead."""
    pipeline = make_train_pipeline(tiny_shards, tokenizer, 32, 8)
    with pytest.raises(ValueError, match="made for 1 loader worker"):
        next(train_batches(pipeline, num_workers=2))

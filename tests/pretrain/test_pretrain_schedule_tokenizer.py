"""The LR schedule and the caption tokenizer."""

from __future__ import annotations

import math

import pytest

from pretrain.schedule import cosine_lr
from pretrain.tokenizer import CaptionTokenizer


def test_warmup_then_cosine_to_zero():
    lrs = [cosine_lr(s, 1.0, warmup_steps=10, total_steps=110) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5)  # half way through the cosine
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:110]))
    assert lrs[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lrs[110:] == [0.0] * 10
    with pytest.raises(ValueError):
        cosine_lr(0, 1.0, 0, 0)


def test_no_warmup_starts_at_base_lr():
    assert cosine_lr(0, 3e-4, 0, 100) == pytest.approx(3e-4)


def test_sot_eot_padding_truncation_and_round_trip(tokenizer, tmp_path):
    ids = tokenizer(["a dress", "word " * 200, "  A   DRESS &amp; "])
    assert ids.shape == (3, 77)
    row = ids[0].tolist()
    n = row.index(tokenizer.eot_id) + 1
    assert row[0] == tokenizer.sot_id and set(row[n:]) == {0}
    # truncated captions keep their EOT in the last position
    assert ids[1, 0] == tokenizer.sot_id and ids[1, -1] == tokenizer.eot_id and (ids[1] != 0).all()
    # cleaning: case, whitespace and HTML entities
    assert tokenizer.decode(ids[2]) == "a dress &"
    tokenizer.save(tmp_path / "tokenizer.json")
    again = CaptionTokenizer.from_file(tmp_path / "tokenizer.json")
    assert (again(["a dress"]) == ids[:1]).all()
    assert CaptionTokenizer.from_str(tokenizer.to_str()).vocab_size == tokenizer.vocab_size <= 512


def test_bad_tokenizer_file_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        CaptionTokenizer.from_file(bad)


def test_shard_pattern_made_absolute_for_train_workers(tmp_path, monkeypatch):
    from pipelines.pretrain import absolute_shard_pattern

    monkeypatch.chdir(tmp_path)
    got = absolute_shard_pattern("shards/{00000..00002}.tar::s3://b/{0..1}.tar::/abs/a.tar")
    assert got == f"{tmp_path}/shards/{{00000..00002}}.tar::s3://b/{{0..1}}.tar::/abs/a.tar"


def test_a_shard_directory_becomes_the_pattern_of_its_shards(tmp_path, monkeypatch):
    """``--train-data <run>/curation/shards``: the shards found there (the demo passes the directory)."""
    from pipelines.pretrain import absolute_shard_pattern

    shards = tmp_path / "run" / "curation" / "shards"
    shards.mkdir(parents=True)
    for name in ("00000.tar", "00001.tar", "00000.parquet", "stats.json"):
        (shards / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert absolute_shard_pattern("run/curation/shards") == f"{tmp_path}/run/curation/shards/{{00000..00001}}.tar"
    with pytest.raises(FileNotFoundError, match="no NNNNN.tar shards"):
        absolute_shard_pattern(str(tmp_path))

"""Weighted mixing of several --train-data sources (issue 25): the achieved proportions are within
sampling error of the weights, deterministic per seed, and reported in metrics.jsonl."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from pretrain.data import make_train_pipeline, parse_weights
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, write_captioned_shards
from pretrain.train import TrainConfig, train_loop_per_worker


@pytest.fixture(scope="module")
def other_shards(fashion_train, tmp_path_factory) -> str:
    """A second source: two shards of other train images."""
    out = tmp_path_factory.mktemp("other")
    write_captioned_shards(fashion_train, out, FASHION_MNIST_CAPTIONS, shard_size=100, limit=200, seed=2)
    return str(out / "{00000..00001}.tar")


def source_counts(pipeline, samples: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    seen = 0
    for batch in pipeline:
        for key, value in batch.counts.items():
            if key.startswith("source_"):
                counts[key] = counts.get(key, 0) + value
        seen += batch.images.shape[0]
        if seen >= samples:
            return counts
    raise AssertionError("the stream ended")


def test_achieved_mix_is_within_sampling_error_of_the_weights(tiny_shards, other_shards, tokenizer):
    urls = f"{tiny_shards}::{other_shards}"
    pipeline = make_train_pipeline(urls, tokenizer, 32, 40, seed=5, shuffle_buffer=50, weights="3::1")
    counts = source_counts(pipeline, 1600)
    n = sum(counts.values())
    share = counts["source_0"] / n
    sigma = math.sqrt(0.75 * 0.25 / n)
    assert abs(share - 0.75) < 4 * sigma, (counts, share)
    # deterministic: the same seed draws the same sources; another seed other ones
    again = source_counts(make_train_pipeline(urls, tokenizer, 32, 40, seed=5, shuffle_buffer=50, weights="3::1"), 1600)
    assert again == counts
    other = source_counts(make_train_pipeline(urls, tokenizer, 32, 40, seed=6, shuffle_buffer=50, weights="3::1"), 1600)
    assert other != counts


def test_weights_must_match_the_sources():
    assert parse_weights("a.tar::b.tar", "3::1") == [3.0, 1.0] == parse_weights("a.tar::b.tar", "3,1")
    with pytest.raises(ValueError, match=r"need 2 positive number\(s\), one per '::'-joined --train-data source"):
        parse_weights("a.tar::b.tar", "1")
    with pytest.raises(ValueError, match="positive"):
        parse_weights("a.tar::b.tar", "1::0")


def test_metrics_report_the_achieved_mix(tiny_shards, other_shards, tokenizer, tmp_path):
    cfg = TrainConfig(train_data=f"{tiny_shards}::{other_shards}", train_data_weights="1::1",
                      tokenizer_json=tokenizer.to_str(), out_dir=str(tmp_path), model="tiny", batch_size=16,
                      steps=4, warmup_steps=1, log_every=2, data_workers=0, shuffle_buffer=20, progress=False)
    train_loop_per_worker(asdict(cfg))
    lines = [json.loads(x) for x in (Path(tmp_path) / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    counts = {k: v for k, v in last["data"].items() if k.startswith("source_")}
    assert set(counts) == {"source_0", "source_1"} and sum(counts.values()) == last["data"]["decoded"]
    assert last["mix"] == {k: round(v / sum(counts.values()), 4) for k, v in counts.items()}
    with pytest.raises(ValueError, match="need 2 positive"):
        TrainConfig(train_data=f"{tiny_shards}::{other_shards}", train_data_weights="1", tokenizer_json="",
                    out_dir=str(tmp_path))

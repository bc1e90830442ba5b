"""Fixtures for the pretrain tests: tiny real WebDataset shards of captioned Fashion-MNIST
train images and a BPE tokenizer trained on their captions (built once per session)."""

from __future__ import annotations

import pytest

from pretrain.data import read_captions
from pretrain.evalsets import FASHION_MNIST_CAPTIONS, load_fashion_mnist, write_captioned_shards
from pretrain.tokenizer import CaptionTokenizer


@pytest.fixture(scope="session")
def fashion_train(sample):
    """The real Fashion-MNIST train split."""
    return load_fashion_mnist(sample["fashion_mnist_dir"], "train")


@pytest.fixture(scope="session")
def tiny_shards(fashion_train, tmp_path_factory) -> str:
    """Four shards of 128 captioned train images; returns the brace pattern."""
    out = tmp_path_factory.mktemp("shards")
    write_captioned_shards(fashion_train, out, FASHION_MNIST_CAPTIONS, shard_size=128, limit=512, seed=1)
    return str(out / "{00000..00003}.tar")


@pytest.fixture(scope="session")
def tokenizer(tiny_shards) -> CaptionTokenizer:
    """A 512-id BPE trained on the shard captions (fits the tiny model's 1024 rows)."""
    return CaptionTokenizer.train(read_captions(tiny_shards, 10_000), vocab_size=512)

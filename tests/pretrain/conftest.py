"""Fixtures for the pretrain tests: tiny real WebDataset shards of captioned Fashion-MNIST
train images and a BPE tokenizer trained on their captions (built once per session)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

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


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bad_shards(tmp_path) -> str:
    """00000.tar: 12 good pairs + a corrupt image + a missing caption + a missing image +
    a non-UTF-8 caption; 00001.tar: not a tar file at all."""
    with wds.TarWriter(str(tmp_path / "00000.tar")) as sink:
        for i in range(12):
            sink.write({"__key__": f"good{i:02d}", "png": _png(i), "txt": f"a random picture {i}"})
        sink.write({"__key__": "corrupt", "jpg": b"\xff\xd8\xff not really a jpeg", "txt": "broken"})
        sink.write({"__key__": "notext", "png": _png(99), "json": b"{}"})
        sink.write({"__key__": "noimage", "txt": "caption without image"})
        sink.write({"__key__": "badutf8", "png": _png(98), "txt": b"\xff\xfe\xfa"})
    (tmp_path / "00001.tar").write_bytes(b"this is not a tar archive" * 40)
    return str(tmp_path / "{00000..00001}.tar")

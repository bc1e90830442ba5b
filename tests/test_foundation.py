"""The foundation: the real sample data is in place, the shared spacing rule is MetaCLIP's,
and the engine environment is set in one place."""

from __future__ import annotations

import bz2
import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest

from queries.text import is_matchable, space_text, space_texts, text_tokens


def test_sample_files_are_the_real_registry_files(sample):
    dump = Path(sample["wiki_dump"])
    assert dump.stat().st_size == 1_695_871  # the file gensim 4.4.0 ships
    with bz2.open(dump, "rt", encoding="utf-8") as f:
        head = f.read(4096)
    assert "<mediawiki" in head and "<siteinfo>" in head
    with gzip.open(sample["unigram_counts"], "rt", encoding="utf-8") as f:
        first = [next(f).rstrip("\n") for _ in range(2)]
    assert first == ["the;175007854", "of;83116294"]
    titles = json.loads(Path(sample["wiki_titles"]).read_text())
    assert len(titles) == 10_033
    assert (Path(sample["wordnet_dir"]) / "data.noun").exists()
    assert (Path(sample["fashion_mnist_dir"]) / "t10k-labels-idx1-ubyte.gz").exists()


def test_load_manifest_names_the_missing_step(tmp_path):
    from pipelines.demo.sample_data import load_manifest

    with pytest.raises(FileNotFoundError, match="make sample-data"):
        load_manifest(tmp_path)


def _metaclip_spacing(text: str) -> str:
    # Written out independently of queries.text, from MetaCLIP's substr_matching.py rule.
    out = " " + text + " "
    for p in [",", ".", ";", ":", "?", "!", "`"]:
        out = out.replace(p, " " + p + " ")
    for c in ["\t", "\n", "\r"]:
        out = out.replace(c, " ")
    return out


CASES = [
    "A dog, a cat.",
    "New York!New York?",
    "tab\tnew\nline\rreturn",
    "back`tick: semi;colon",
    "(buildings) buildings",
    "",
    "ünïcödé, 東京.",
]


@pytest.mark.parametrize("text", CASES)
def test_space_text_is_metaclip_rule(text):
    assert space_text(text) == _metaclip_spacing(text)


def test_space_texts_vectorised_equals_scalar():
    arr = pa.array(CASES + [None])
    assert space_texts(arr).to_pylist() == [space_text(t) for t in CASES] + [None]


def test_tokens_and_matchability():
    assert text_tokens("New York, NY.") == ["New", "York", ",", "NY", "."]
    assert is_matchable("new york")
    assert not is_matchable("U.S.")  # '.' is always spaced out of the text
    assert not is_matchable(" dog")
    assert not is_matchable("")


def test_configure_environment_sets_offline_defaults(monkeypatch):
    from pipelines import runtime

    monkeypatch.delenv("NO_ALBUMENTATIONS_UPDATE", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")  # a user's explicit choice wins
    runtime.configure_environment()
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    assert Path(os.environ["RAY_TMPDIR"]).is_dir()


def test_beam_options_pick_an_offline_runner():
    from pipelines.runtime import beam_pipeline_options

    opts = beam_pipeline_options().get_all_options()
    assert opts["runner"] == "DirectRunner"
    assert opts["direct_num_workers"] == 1
    opts = beam_pipeline_options("FlinkRunner", ["--flink_master=127.0.0.1:8081"]).get_all_options()
    assert opts["runner"] == "FlinkRunner" and opts["flink_master"] == "127.0.0.1:8081"

"""Worldwide query lists (MetaCLIP 2): the per-language caps, each language's sources, stable ids,
the segmenters' entries for languages written without spaces, and the English-only list unchanged."""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipelines.build_queries import run
from queries.build import QUERY_SCHEMA, QueryListConfig
from queries.languages import (
    NO_SPACE_LANGUAGES,
    is_matchable_in,
    is_no_space,
    matching_rule,
    segment_text,
    segmenter,
)
from queries.ngrams import COUNT_SCHEMA
from queries.worldwide import (
    WORLDWIDE_SCHEMA,
    WorldwideConfig,
    read_frequency_list,
    select_top_bigrams,
    select_top_titles,
    select_top_unigrams,
    top_count,
)
from queries.wordnet import read_language_wordnet

from test_queries_titles_wordnet import HOUR_0, HOUR_1  # same dir (rootdir-style imports)

OUTPUTS = ("queries.parquet", "metadata.json", "stats.json")
# Real Chinese prose (hand-written here: no package ships Chinese sentences), Japanese, Thai.
ZH_TEXT = [
    "北京是中华人民共和国的首都，也是全国的政治中心和文化中心。",
    "北京大学位于北京市海淀区，是中国著名的大学。",
    "上海是中国的经济中心，北京是政治中心。",
    "清华大学和北京大学都在北京。",
]
JA_TEXT = ["東京は日本の首都です。", "富士山は日本で一番高い山です。", "東京から富士山が見える日もあります。"]
TH_TEXT = ["กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย", "ประเทศไทยมีประชากรประมาณเจ็ดสิบล้านคน"]


def _pythainlp_corpus() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("pythainlp").submodule_search_locations[0]) / "corpus"


def _counts(pairs) -> pa.Table:
    return pa.table({"ngram": [w for w, _ in pairs], "count": [c for _, c in pairs]}, schema=COUNT_SCHEMA)


def _read(out: Path, name: str) -> bytes:
    return (out / "queries" / name).read_bytes()


# -- languages: the no-space set and the two rules ---------------------------------------------


def test_no_space_languages_and_their_rule():
    for code in ("zh", "zh-yue", "ja", "th", "lo", "my", "km", "bo"):
        assert is_no_space(code) and matching_rule(code) == "substring", code
    for code in ("en", "es", "fr", "de", "ko", "vi", "ru"):
        assert not is_no_space(code) and matching_rule(code) == "spaced", code
    assert {"zh", "ja", "th", "lo", "my", "km", "bo"} <= NO_SPACE_LANGUAGES
    # raw substrings may hold what the spaced rule pads (a dot); neither rule takes edge spaces or newlines
    assert is_matchable_in("3.5万元", "zh") and not is_matchable_in("3.5 euros", "es")
    assert not is_matchable_in(" 北京", "zh") and not is_matchable_in("北\n京", "zh") and not is_matchable_in("", "ja")
    with pytest.raises(ValueError, match="no offline word segmenter for 'my'"):
        segmenter("my")
    assert segmenter("es") is None


def test_segment_text_keeps_adjacency_only_where_the_text_has_it():
    def cut(chunk):  # a stand-in segmenter: characters in pairs, dropping a zero-width space
        chunk = chunk.replace("\u200b", "")
        return [chunk[i:i + 2] for i in range(0, len(chunk), 2)]

    assert segment_text("abcd ef", cut) == "ab cd  ef"  # the text's own space: two
    assert segment_text("ab\u200bcd", cut) == "ab  cd"  # a character the segmenter dropped: not adjacent


# -- caps, on small synthetic count tables -----------------------------------------------------


def test_default_caps_are_metaclip_2s():
    config = WorldwideConfig()
    assert (config.unigram_top_fraction, config.unigram_cap) == (0.10, 251_465)
    assert config.bigram_cap == 100_646
    assert (config.title_top_fraction, config.title_cap) == (0.76, 61_235)
    assert config.max_entry_chars == 256


def test_top_count_is_exact():
    assert top_count(30, 0.1) == 3  # 0.1 * 30 in floating point is 3.0000000000000004
    assert top_count(25, 0.1) == 3 and top_count(100, 0.76) == 76 and top_count(0, 0.76) == 0
    with pytest.raises(ValueError):
        top_count(10, 1.5)


def test_unigrams_top_fraction_then_cap():
    words = [(f"w{i:03d}", 1000 - i) for i in range(100)] + [("tie", 991), ("(x", 5000), ("a" * 257, 9000)]
    entries, dropped, caps = select_top_unigrams(_counts(words), "es", WorldwideConfig())
    # 101 candidates (the non-word and the 257-character word are not), top 10% = ceil(10.1) = 11
    assert caps == {"candidates": 101, "top_fraction": 0.1, "top": 11, "cap": 251_465, "kept": 11,
                    "limited_by": "fraction"}
    assert entries["query"].to_pylist()[:10] == [f"w{i:03d}" for i in range(9)] + ["tie"]  # by count, ties by query
    assert dropped == {"not_a_word": 1, "unmatchable": 0, "too_long": 1, "below_top_fraction": 90, "over_cap": 0}
    assert entries.num_rows + sum(dropped.values()) == len(words)
    capped, dropped, caps = select_top_unigrams(_counts(words), "es", WorldwideConfig(unigram_cap=4))
    assert capped["query"].to_pylist() == ["w000", "w001", "w002", "w003"] and caps["limited_by"] == "cap"
    assert dropped["over_cap"] == 7 and dropped["below_top_fraction"] == 90


def test_bigrams_by_pmi_with_cap_and_joined_in_no_space_languages():
    scored = pa.table({
        "ngram": ["北京 大学", "北 京大学", "上海 交通", "中国 的", "清华 大学", "a b"],
        "count": pa.array([9, 4, 6, 50, 2, 7], pa.int64()),
        "pmi": [12.0, 14.0, 10.0, 2.0, 20.0, 9.0],
    })
    config = WorldwideConfig(base=QueryListConfig(min_bigram_count=3, pmi_threshold=8), bigram_cap=3)
    entries, dropped, caps, calibration = select_top_bigrams(scored, "zh", config)
    # "北 京大学" and "北京 大学" join to one entry: the higher PMI (14) stands
    assert entries["query"].to_pylist() == ["北京大学", "上海交通", "ab"]
    assert entries["pmi"].to_pylist() == [14.0, 10.0, 9.0] and entries["count"].to_pylist() == [4, 6, 7]
    assert dropped == {"below_min_bigram_count": 1, "below_pmi_threshold": 1, "unmatchable": 0, "too_long": 0,
                       "same_joined": 1, "over_cap": 0}
    assert caps["kept"] == 3 and calibration["pmi>=8"] == 4
    spaced, dropped, caps, _ = select_top_bigrams(scored, "es", WorldwideConfig(
        base=QueryListConfig(min_bigram_count=3, pmi_threshold=8), bigram_cap=2))
    assert spaced["query"].to_pylist() == ["北 京大学", "北京 大学"]  # highest PMI first, the cap at 2
    assert dropped["over_cap"] == 2 and caps["limited_by"] == "cap"


def test_titles_top_fraction_by_views_then_cap():
    titles = [f"Page {i:03d}" for i in range(100)] + ["Special:Search", "x" * 300]
    views = pa.table({"title": titles, "views": pa.array(list(range(1000, 1100)) + [10**6, 10**6], pa.int64())})
    entries, dropped, caps = select_top_titles(views, "es", WorldwideConfig())
    assert caps["top"] == 76 and caps["kept"] == 76 and caps["ranked_by"] == "views"
    assert entries["query"].to_pylist()[0] == "Page 099" and entries["views"].to_pylist()[0] == 1099
    assert dropped == {"colon": 1, "unmatchable": 0, "too_long": 1, "below_top_fraction": 24, "over_cap": 0}
    capped, dropped, caps = select_top_titles(views, "es", WorldwideConfig(title_cap=10))
    assert capped["query"].to_pylist() == [f"Page {i:03d}" for i in range(99, 89, -1)]
    assert caps["limited_by"] == "cap" and dropped["over_cap"] == 66
    # a plain title list has no views: not ranked by them; past the cap the shortest are kept
    plain = pa.table({"title": ["กรุงเทพมหานคร", "ไทย", "ลาว", "ประเทศไทย"], "views": pa.nulls(4, pa.int64())})
    listed, dropped, caps = select_top_titles(plain, "th", WorldwideConfig(title_cap=3))
    assert listed["query"].to_pylist() == ["ลาว", "ไทย", "ประเทศไทย"] and caps["top_fraction"] is None


# -- sources -------------------------------------------------------------------------------------


def test_frequency_lists(tmp_path):
    path = tmp_path / "freq.txt.gz"
    path.write_bytes(gzip.compress("ที่\t818\nการ\t592\nBroken\nDe;12\nde;3\n\t4\n".encode()))
    counts, dropped, unit = read_frequency_list(str(path))
    assert dict(zip(counts["ngram"].to_pylist(), counts["count"].to_pylist())) == {"ที่": 818, "การ": 592, "de": 15}
    assert dropped == {"empty_word": 1, "bad_line": 1} and unit == "occurrences"
    es, dropped, unit = read_frequency_list("wordfreq:es")
    assert es.num_rows > 300_000 and "per 10^9 words" in unit and dropped == {"empty_word": 0, "bad_line": 0}
    top = es.sort_by([("count", "descending")]).slice(0, 3)["ngram"].to_pylist()
    assert top == ["de", "la", "que"]
    assert read_frequency_list("wordfreq:no")[0].num_rows > 10_000  # Wikipedia's no is wordfreq's nb
    with pytest.raises(ValueError, match="wordfreq has no list for 'xx'"):
        read_frequency_list("wordfreq:xx")


def test_multilingual_wordnets(tmp_path):
    tab = tmp_path / "wn-data-spa.tab"
    tab.write_text("# Spanish\n02084071-n\tspa:lemma\tperro\n02084071-n\tspa:lemma\tcan\n"
                   "02084071-n\tspa:def\tun animal\n02121620-n\tlemma\tGato_doméstico\n", encoding="utf-8")
    names = read_language_wordnet(str(tab))
    assert names.names == ["gato doméstico", "perro"] and names.synsets == 2
    assert read_language_wordnet(str(tab), all_lemmas=True).names == ["Gato doméstico", "can", "perro"]
    thai = _pythainlp_corpus() / "wordnet_th.db"  # the Thai WordNet pythainlp ships
    names = read_language_wordnet(str(thai))
    with sqlite3.connect(thai) as db:
        (synsets,) = db.execute("SELECT count(DISTINCT synsetid) FROM word_synset").fetchone()
        (dog,) = db.execute("SELECT li FROM word_synset WHERE synsetid = '02084071-n' ORDER BY rowid").fetchone()
    assert names.synsets == synsets and dog in names.names


@pytest.fixture(scope="module")
def world(sample, tmp_path_factory):
    """Sources of four languages: es and fr (their real Wikipedia lead paragraphs + wordfreq lists
    + pageviews of their domains), zh (Chinese prose, jieba) and th (pythainlp's corpora)."""
    root = tmp_path_factory.mktemp("world")
    (root / "zh.txt").write_text("\n".join(ZH_TEXT * 3), encoding="utf-8")
    pageviews = (b"es Madrid 900 0\nes.m Madrid 100 0\nes Barcelona 700 0\nes Sevilla 5 0\nes Especial:Buscar 9999 0\n"
                 b"fr Paris 800 0\nfr.m Lyon 300 0\nen Madrid 123456 0\nde Paris 50 0\nes.d Madrid 77 0\n")
    (root / "pageviews-20240101-000000.gz").write_bytes(gzip.compress(pageviews))
    corpus = _pythainlp_corpus()
    args = [
        "--text", f"es={sample['wiki_summaries_es']}", "--text", f"fr={sample['wiki_summaries_fr']}",
        "--text", f"zh={root / 'zh.txt'}", "--unigram-counts", "es=wordfreq:es", "--unigram-counts", "fr=wordfreq:fr",
        "--pageviews", str(root / "pageviews-*.gz"),
        "--unigram-counts", f"th={corpus / 'tnc_freq.txt'}", "--titles", f"th={corpus / 'wikipedia_titles_th.txt'}",
        "--wordnet", f"th={corpus / 'wordnet_th.db'}",
        "--min-bigram-count", "2", "--runner", "local", "--quiet",
    ]  # fmt: skip
    return root, args


def _world_build(tmp_path, name, languages, args):
    out = tmp_path / name
    stats = run(["--out", str(out), *[a for code in languages for a in ("--language", code)], *args])
    return out, stats


def test_worldwide_sources_per_language(world, tmp_path):
    root, args = world
    out, stats = _world_build(tmp_path, "w", ["es", "fr", "th", "zh"], args)
    table = pq.read_table(out / "queries" / "queries.parquet")
    assert table.schema.equals(WORLDWIDE_SCHEMA)
    by = stats["by_language"]
    assert stats["languages"] == ["es", "fr", "th", "zh"] and sorted(by) == stats["languages"]
    for code in ("es", "fr"):  # counted prose (bigrams), wordfreq (unigrams), the pageviews of <code>, <code>.m
        assert by[code]["inputs"]["unigram_counts"] == f"wordfreq:{code}" and by[code]["matching"] == "spaced"
        assert by[code]["sources"]["bigram"] > 500 and by[code]["segmenter"] is None
        assert by[code]["caps"]["unigram"]["kept"] == top_count(by[code]["caps"]["unigram"]["candidates"], 0.10)
        assert "per 10^9 words" in by[code]["unigram_count_unit"]
    assert stats["pageviews"]["kept_lines"] == 7 and stats["pageviews"]["other_project_lines"] == 3
    es = table.filter(pc.equal(table["language"], "es"))
    titles = es.filter(pc.equal(es["source"], "title")).to_pylist()
    # es titles: Madrid (900 + 100 mobile), Barcelona, Sevilla; the top 76% of 3 = 3; ':' dropped
    assert [(t["query"], t["views"]) for t in titles] == [("Barcelona", 700), ("Madrid", 1000), ("Sevilla", 5)]
    assert by["es"]["dropped"]["title"]["colon"] == 1
    assert by["fr"]["caps"]["title"]["candidates"] == 2  # Paris (fr) and Lyon (fr.m), not de's Paris
    assert by["th"]["matching"] == "substring" and set(by["th"]["sources"]) == {"unigram", "title", "wordnet"}
    assert by["th"]["caps"]["title"]["kept"] == 61_235 and by["th"]["caps"]["title"]["limited_by"] == "cap"
    assert by["zh"]["segmenter"].startswith("jieba==") and by["zh"]["matching"] == "substring"
    assert by["zh"]["sources"]["unigram"] > 0 and by["zh"]["corpus"]["documents"] == 12
    for code in stats["languages"]:  # every entry fits and can match under its language's rule
        queries = table.filter(pc.equal(table["language"], code))["query"].to_pylist()
        assert len(queries) == by[code]["rows"] == sum(by[code]["sources"].values())
        assert all(len(q) <= 256 and is_matchable_in(q, code) for q in queries)
        assert json.loads(_read(out, f"metadata/{code}.json")) == queries
    assert json.loads(_read(out, "metadata.json")) == table["query"].to_pylist()
    assert json.loads(_read(out, "stats.json"))["config"]["worldwide"]["title_cap"] == 61_235


def test_stable_ids_whatever_the_order_of_the_flags(world, tmp_path):
    root, args = world
    small = ["--language", "es", "--language", "zh", "--text", f"zh={root / 'zh.txt'}",
             "--unigram-counts", "es=wordfreq:es", "--pageviews", str(root / "pageviews-*.gz"),
             "--min-bigram-count", "2", "--runner", "local", "--quiet"]
    first = tmp_path / "a"
    run(["--out", str(first), *small])
    again = tmp_path / "b"  # the languages and the sources named in another order
    run(["--out", str(again), "--pageviews", str(root / "pageviews-*.gz"), "--unigram-counts", "es=wordfreq:es",
         "--language", "zh", "--text", f"zh={root / 'zh.txt'}", "--language", "es", "--language", "zh",
         "--min-bigram-count", "2", "--runner", "local", "--quiet"])
    for name in (*OUTPUTS, "metadata/es.json", "metadata/zh.json"):
        assert _read(first, name) == _read(again, name), name
    table = pq.read_table(first / "queries" / "queries.parquet")
    keys = list(zip(table["language"].to_pylist(), table["query"].to_pylist()))
    assert keys == sorted(keys) and table["query_id"].to_pylist() == list(range(table.num_rows))
    assert table["language"].to_pylist()[0] == "es" and table["language"].to_pylist()[-1] == "zh"


def test_segmenter_entries_of_no_space_languages(tmp_path):
    """Chinese (jieba), Japanese (fugashi + unidic-lite), Thai (pythainlp): the entries are the
    segmenter's words and adjacent pairs, written with no added space, each a raw substring of the
    text it was counted from."""
    texts = {"zh": ZH_TEXT * 3, "ja": JA_TEXT * 3, "th": TH_TEXT * 3}
    args = []
    for code, lines in texts.items():
        (tmp_path / f"{code}.txt").write_text("\n".join(lines), encoding="utf-8")
        args += ["--language", code, "--text", f"{code}={tmp_path / f'{code}.txt'}"]
    stats = run(["--out", str(tmp_path / "out"), *args, "--unigram-top-fraction", "1", "--min-bigram-count", "3",
                 "--pmi-threshold", "0", "--runner", "local", "--quiet"])
    table = pq.read_table(tmp_path / "out" / "queries" / "queries.parquet")
    for code, lines in texts.items():
        mine = table.filter(pc.equal(table["language"], code))
        entries = dict(zip(mine["query"].to_pylist(), mine["source"].to_pylist()))
        assert all(" " not in e and any(e in line for line in lines) for e in entries), code
        assert stats["by_language"][code]["segmenter"] is not None
    zh = {q: s for q, s in zip(table["query"].to_pylist(), table["source"].to_pylist())}
    assert {"北京", "北京大学", "首都", "上海", "政治", "中心"} <= set(zh) and "北京是中华人民共和国的首都" not in zh
    assert zh["北京"] == "unigram" and zh["政治中心"] == "bigram"  # 政治 + 中心, side by side, joined
    ja = set(table.filter(pc.equal(table["language"], "ja"))["query"].to_pylist())
    assert {"東京", "日本", "首都", "富士", "山"} <= ja and "富士山" in ja  # unidic's short words, then the pair
    th = set(table.filter(pc.equal(table["language"], "th"))["query"].to_pylist())
    assert {"กรุงเทพมหานคร", "เมืองหลวง", "ประเทศ", "ไทย", "ประเทศไทย"} <= th


def test_cli_language_flags(tmp_path, world):
    root, _ = world
    codes = tmp_path / "codes.txt"
    codes.write_text("# two languages\nzh, es\n\nzh  # again\n")
    stats = run(["--out", str(tmp_path / "o"), "--languages", str(codes), "--text", f"zh={root / 'zh.txt'}",
                 "--unigram-counts", "es=wordfreq:es", "--runner", "local", "--quiet"])
    assert stats["languages"] == ["es", "zh"]
    templated = run(["--out", str(tmp_path / "t"), "--language", "fr", "--language", "es",
                     "--unigram-counts", "wordfreq:{lang}", "--runner", "local", "--quiet"])
    assert {c: v["inputs"] for c, v in templated["by_language"].items()} == {
        "es": {"unigram_counts": "wordfreq:es"}, "fr": {"unigram_counts": "wordfreq:fr"}}
    base = ["--out", str(tmp_path / "x"), "--language", "es", "--runner", "local", "--quiet"]
    with pytest.raises(SystemExit, match="name the source's language"):
        run([*base, "--text", str(root / "zh.txt")])
    with pytest.raises(SystemExit, match="'fr' is not among the languages built"):
        run([*base, "--text", f"fr={root / 'zh.txt'}"])
    with pytest.raises(SystemExit, match="no such file"):
        run([*base, "--text", str(root / "{lang}.txt")])
    with pytest.raises(SystemExit, match="not a Wikipedia language code"):
        run([*base, "--language", "Spanish!", "--text", "es=x"])
    with pytest.raises(SystemExit, match="no source names es"):
        run([*base, "--language", "zh", "--text", f"zh={root / 'zh.txt'}"])
    with pytest.raises(SystemExit, match="no offline sample source for 'xx'"):
        run(["--out", str(tmp_path / "y"), "--sample", "--language", "xx", "--quiet"])


def _engines_agree(root, tmp_path, runner):
    args = ["--language", "zh", "--text", f"zh={root / 'zh.txt'}", "--min-bigram-count", "2",
            "--pmi-threshold", "2", "--quiet"]
    local, other = tmp_path / "local", tmp_path / runner
    stats = run(["--out", str(local), "--runner", "local", *args])
    run(["--out", str(other), "--runner", runner, *args])
    assert stats["by_language"]["zh"]["sources"]["bigram"] > 0
    for name in ("queries.parquet", "metadata.json"):
        assert _read(local, name) == _read(other, name), name


def test_beam_counts_a_no_space_language_as_local_does(world, tmp_path):
    _engines_agree(world[0], tmp_path, "beam")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_counts_a_no_space_language_as_local_does(world, tmp_path, ray_session):
    _engines_agree(world[0], tmp_path, "ray")


# -- the English-only list is unchanged --------------------------------------------------------

# Digests of the English-only build below made by the code before worldwide lists existed
# (commit 916d636): stats.json and metadata.json byte for byte, the parquet's rows.
ENGLISH_BEFORE = {
    "metadata.json": "ca5f437fee7014547ec434dc6b57f85a6584be0f3509e1ebede0436ba4f543bf",
    "stats.json": "241339fb72467ec3eff1c93b82920466099aaa61b602f13ad891b9a7c62b239f",
    "rows": "5a0f68945a036ba66d1857b2dbac3262d02d784bdd3c3a6a9e71c028a0f50e51",
}


def test_english_only_list_unchanged(sample, tmp_path):
    for name, data in (("pageviews-20240101-000000.gz", HOUR_0), ("pageviews-20240101-010000.gz", HOUR_1)):
        (tmp_path / name).write_bytes(gzip.compress(data))
    out = tmp_path / "en"
    run(["--out", str(out), "--wiki-dump", sample["wiki_dump"], "--pageviews", str(tmp_path / "pageviews-*.gz"),
         "--wordnet", sample["wordnet_dir"], "--min-count", "20", "--min-bigram-count", "3", "--pmi-threshold", "6",
         "--min-views", "100", "--runner", "local", "--quiet"])
    table = pq.read_table(out / "queries" / "queries.parquet")
    assert table.schema.equals(QUERY_SCHEMA) and "language" not in table.column_names
    assert not (out / "queries" / "metadata").exists()
    for name in ("metadata.json", "stats.json"):
        assert hashlib.sha256(_read(out, name)).hexdigest() == ENGLISH_BEFORE[name], name
    rows = hashlib.sha256(json.dumps(table.to_pylist(), sort_keys=True).encode()).hexdigest()
    assert rows == ENGLISH_BEFORE["rows"]

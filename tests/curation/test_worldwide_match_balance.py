"""Worldwide curation (MetaCLIP 2), the curation side: a caption matched only against its own
language's entries -- the spaced rule for spaced scripts, raw substring for scripts written
without spaces -- and balanced with its language's t from English's tail share."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.text.balance import Balancer
from curation.text.match import MatchStage, QueryMatcher, WorldwideMatcher, load_query_languages
from curation.text.threshold import entry_thresholds, language_thresholds, scaled_threshold, tail_share
from queries.text import space_text

# hand-checked captions per script: (language, caption, entries of that language it must match)
HAND = [
    ("en", "A red fox, in the snow.", {"fox", "red fox", "snow"}),
    ("en", "Foxes are not a fox", {"fox"}),  # word boundaries: "Foxes" is not "fox"; case-sensitive
    ("es", "Un zorro rojo en la nieve", {"zorro", "zorro rojo", "nieve"}),
    ("es", "zorros; nieve.", {"nieve"}),  # punctuation is spaced: "nieve." matches "nieve"
    ("fr", "Un renard roux dans la neige", {"renard", "neige", "renard roux"}),
    ("zh", "北京的故宫博物院", {"北京", "故宫", "博物院", "故宫博物院"}),  # raw substrings, overlapping
    ("zh", "南京市长江大桥", {"南京", "长江", "大桥", "长江大桥", "市长"}),  # every occurrence, even "市长"
    ("ja", "東京タワーの夜景", {"東京", "タワー", "東京タワー", "夜景"}),
    ("th", "แมวดำนอนบนโซฟา", {"แมว", "โซฟา"}),
]
ENTRIES = {
    "en": ["fox", "red fox", "snow", "Fox", "foxes are"],
    "es": ["zorro", "zorro rojo", "nieve", "rojo en la"],  # "rojo en la" spans words: matches the first caption
    "fr": ["renard", "neige", "renard roux", "Renard"],
    "zh": ["北京", "故宫", "博物院", "故宫博物院", "南京", "长江", "大桥", "长江大桥", "市长", "上海"],
    "ja": ["東京", "タワー", "東京タワー", "夜景", "大阪"],
    "th": ["แมว", "โซฟา", "สุนัข"],
}
HAND[2] = ("es", "Un zorro rojo en la nieve", {"zorro", "zorro rojo", "nieve", "rojo en la"})


def worldwide_list() -> tuple[list[str], list[str]]:
    pairs = sorted((lang, q) for lang, qs in ENTRIES.items() for q in qs)
    return [q for _, q in pairs], [lang for lang, _ in pairs]


def reference(caption: str, language: str, queries: list[str], languages: list[str]) -> list[int]:
    """The documented rule, in plain Python: spaced scripts ``" " + e + " " in space_text(text)``,
    no-space scripts ``e in text``; only the caption's own language's entries."""
    raw = language in ("zh", "ja", "th")
    spaced = space_text(caption)
    return [i for i, (q, lang) in enumerate(zip(queries, languages)) if lang == language
            and q and ((q in caption) if raw else (f" {q} " in spaced))]


def test_hand_checked_captions_per_script():
    queries, languages = worldwide_list()
    matcher = WorldwideMatcher(queries, languages)
    got = matcher.match_arrow([c for _, c, _ in HAND], [lang for lang, _, _ in HAND]).to_pylist()
    for (lang, caption, expected), ids in zip(HAND, got):
        assert {queries[i] for i in ids} == expected, (lang, caption)
        assert all(languages[i] == lang for i in ids) and ids == sorted(ids)
    # a caption is matched only against its own language's list
    assert matcher.match_arrow(["北京 fox"], ["en"]).to_pylist() == [[queries.index("fox")]]
    assert matcher.match_arrow(["北京 fox"], ["zh"]).to_pylist() == [[queries.index("北京")]]
    assert matcher.match_arrow(["fox", None, "fox"], ["de", "en", None]).to_pylist() == [[], [], []]


def test_matcher_equals_the_plain_python_rule_on_thousands_of_captions():
    queries, languages = worldwide_list()
    rng = random.Random(7)
    words = {lang: [w for q in qs for w in (q.split(" ") if lang not in ("zh", "ja", "th") else [q])]
             + ["the", "la", "de", ",", ".", "x"] for lang, qs in ENTRIES.items()}
    captions, langs = [], []
    for _ in range(3000):
        lang = rng.choice(sorted(ENTRIES))
        pieces = [rng.choice(words[lang]) for _ in range(rng.randint(1, 8))]
        captions.append(("" if lang in ("zh", "ja", "th") and rng.random() < 0.7 else " ").join(pieces))
        langs.append(lang)
    captions += [c for _, c, _ in HAND]
    langs += [lang for lang, _, _ in HAND]
    got = WorldwideMatcher(queries, languages).match_arrow(captions, langs).to_pylist()
    expected = [reference(c, lang, queries, languages) for c, lang in zip(captions, langs)]
    assert got == expected
    assert sum(map(bool, got)) > 2000  # most captions match something: the comparison is not vacuous


def test_character_mode_is_raw_substring_matching():
    """The compiled matcher in character mode: every occurrence, repeats, punctuation, spaces and
    multi-byte code points inside entries, nothing for the empty entry."""
    entries = ["长江", "长江大桥", "", "长江", "江,大", "a b", "桥!", "😀"]
    matcher = QueryMatcher(entries, characters=True)
    texts = ["长江,大桥!", "长江大桥", "黄河", None, "", "xa bx 😀", "ab"]
    assert matcher.match(texts) == [[0, 3, 4, 6], [0, 1, 3], [], [], [], [5, 7], []]
    assert matcher.match(texts) == [[i for i, e in enumerate(entries) if t and e and e in t] for t in texts]


def test_match_stage_reads_the_language_column_of_a_worldwide_list(tmp_path):
    queries, languages = worldwide_list()
    path = str(tmp_path / "queries.parquet")
    pq.write_table(pa.table({"query_id": pa.array(range(len(queries)), pa.int64()), "query": queries,
                             "language": languages}), path)
    assert load_query_languages(path).tolist() == languages
    stage = MatchStage(path)
    rows = pa.table({"uid": ["a", "b"], "text": ["红色的长江大桥", "a red fox"], "language": ["zh", "en"]})
    out = stage(rows)
    assert [{queries[i] for i in ids} for ids in out.column("query_ids").to_pylist()] == [
        {"长江", "大桥", "长江大桥"}, {"fox", "red fox"}]
    with pytest.raises(ValueError, match="--languages"):
        stage(rows.drop_columns(["language"]))
    english = str(tmp_path / "english.parquet")  # no language column: the English-only matcher, as before
    pq.write_table(pa.table({"query_id": pa.array(range(3), pa.int64()), "query": ["fox", "red fox", "snow"]}), english)
    assert load_query_languages(english) is None and isinstance(MatchStage(english).matcher, QueryMatcher)


def test_language_t_from_englishs_tail_share_equals_the_closed_form():
    # English: ten entries of 10 matches and one of 900: t_en = 11 puts exactly 100 of 1,000 in the tail
    english = [10] * 10 + [900]
    # Spanish: twenty entries of 5 and one of 900: the t with a tail share of 0.1 is 6 (5 + 1)
    spanish = [5] * 20 + [900]
    # Chinese: 2 entries of 1, 3 of 30, one of 100 (total 192): tail shares 2/192, 92/192 -> closest to 0.1 is t = 2
    chinese = [1, 1, 30, 30, 30, 100]
    counts = np.array(english + spanish + chinese, np.int64)
    languages = np.array(["en"] * 11 + ["es"] * 21 + ["zh"] * 6, dtype=object)
    plan = language_thresholds(counts, languages, t=11)
    assert plan["p"] == pytest.approx(0.1) and plan["t"] == {"en": 11.0, "es": 6.0, "zh": 2.0}
    assert tail_share(np.array(spanish), 6) == pytest.approx(0.1)
    # t not given: English's own scaled t (MetaCLIP's 5.6 % tail share) sets p
    auto = language_thresholds(counts, languages, t=None)
    assert auto["t"]["en"] == scaled_threshold(np.array(english))
    assert auto["p"] == pytest.approx(tail_share(np.array(english), auto["t"]["en"]))
    per_entry = entry_thresholds(counts, 11, languages)
    assert per_entry.tolist() == [11.0] * 11 + [6.0] * 21 + [2.0] * 6
    assert entry_thresholds(counts, 11) == 11.0  # a one-language list: one t, as before


def test_balancing_per_language_keeps_min_of_count_and_the_languages_t():
    """Each row matches one entry, so E[kept of entry e] = c_e * p_e = min(c_e, t_L): checked per
    entry within 5 sigma of the binomial, and in total."""
    rng = np.random.default_rng(3)
    counts = np.array([40, 400, 4000, 7, 2, 300, 3000, 1], np.int64)
    languages = np.array(["en", "en", "en", "en", "es", "es", "es", "zh"], dtype=object)
    t = entry_thresholds(counts, 100, languages)
    rows = np.repeat(np.arange(len(counts)), counts)
    table = pa.table({"uid": [f"u{i}-{rng.integers(1 << 40)}" for i in range(len(rows))],
                      "query_ids": pa.array([[int(e)] for e in rows], pa.list_(pa.int32()))})
    kept = Balancer(counts, 100, seed=11, languages=languages)(table)
    live = np.array([r == "" for r in kept.column("reject_reason").to_pylist()])
    kept_per_entry = np.bincount(rows[live], minlength=len(counts))
    expected = np.minimum(counts, t)
    p = expected / counts
    sigma = np.sqrt(counts * p * (1 - p))
    assert np.all(np.abs(kept_per_entry - expected) <= 5 * sigma + 1e-9), (kept_per_entry, expected)
    assert t[4] != t[0]  # Spanish's own t, not English's
    # with every entry English, the worldwide draw is the English-only one, pair for pair
    one = Balancer(counts, 100, seed=11)(table).column("reject_reason").to_pylist()
    everywhere_en = Balancer(counts, 100, seed=11, languages=np.array(["en"] * len(counts), dtype=object))
    assert everywhere_en(table).column("reject_reason").to_pylist() == one


def test_the_part_plan_records_each_languages_t():
    from curation.text.selection import plan_parts

    counts = np.array([10] * 10 + [900] + [5] * 20 + [900], np.int64)
    languages = np.array(["en"] * 11 + ["es"] * 21, dtype=object)
    plan = plan_parts(counts, np.array([2000, 0]), 11, 1_000_000, 8, languages)
    assert json.loads(json.dumps(plan))["t"] == {"p": pytest.approx(0.1), "reference": "en",
                                                 "t": {"en": 11.0, "es": 6.0}}
    assert plan_parts(counts, np.array([2000, 0]), 11, 1_000_000, 8)["t"] == 11.0


WORLDWIDE_ENTRIES = {"en": ["face", "hand", "flag", "person", "heart"],
                     "es": ["cara", "mano", "bandera", "persona", "corazón"],
                     "fr": ["visage", "main", "drapeau", "personne", "cœur"], "zh": ["脸", "手", "旗", "人", "心"],
                     "ja": ["顔", "手", "旗", "人", "ハート"]}


def worldwide_pool_and_list(tmp_path, sample) -> tuple[str, str, dict[str, list[str]], list[tuple[str, str]]]:
    """(pool path, queries path, entries per language, sorted (language, query) pairs): the first
    6,000 emoji rows of the real worldwide sample pool and a small en/es/fr/zh/ja list, written
    under ``tmp_path``."""
    pool = pq.read_table(sample["sample_worldwide_pool"])
    pool = pool.filter(pa.array([s.startswith("emoji") for s in pool.column("source").to_pylist()])).slice(0, 6000)
    pool_path = str(tmp_path / "pool.parquet")
    pq.write_table(pool, pool_path)
    pairs = sorted((lang, q) for lang, qs in WORLDWIDE_ENTRIES.items() for q in qs)
    queries = str(tmp_path / "queries.parquet")
    pq.write_table(pa.table({"query_id": pa.array(range(len(pairs)), pa.int64()), "query": [q for _, q in pairs],
                             "language": [lang for lang, _ in pairs]}), queries)
    return pool_path, queries, WORLDWIDE_ENTRIES, pairs


@pytest.mark.ray
def test_a_worldwide_selection_end_to_end_on_ray_and_beam(tmp_path, sample, ray_session):
    """The real worldwide sample pool (emoji with their CLDR names in en, es, fr, zh, ja) against
    a small worldwide list: each language's rows matched by its own rule, a language column in
    the selection, each language's t in the summary -- the same bytes on Ray and on Beam."""
    from pipelines import build_wit

    pool_path, queries, entries, pairs = worldwide_pool_and_list(tmp_path, sample)
    outs = {}
    for runner in ("ray", "beam"):
        out = tmp_path / runner
        summary = build_wit.run(["--pool", pool_path, "--queries", queries, "--out", str(out), "--until", "select",
                                 "--runner", runner, "--languages", *entries, "--parts", "2"])
        outs[runner] = {p.name: p.read_bytes() for p in sorted((out / "curation" / "selected").glob("*.parquet"))}
        by_language = summary["by_language"]
        assert set(by_language) == set(entries) and 0 < summary["tail_share"] < 1
        assert all(v["pairs_selected"] > 0 and v["entries_matched"] > 0 for v in by_language.values()), by_language
    assert outs["ray"] == outs["beam"]
    selected = pa.concat_tables([pq.read_table(tmp_path / "ray" / "curation" / "selected" / name) for name in outs["ray"]])
    languages = selected.column("language").to_pylist()
    assert set(languages) == set(entries)
    queries_of = [q for _, q in pairs]
    langs_of = [lang for lang, _ in pairs]
    for text, lang, ids in zip(selected.column("text").to_pylist(), languages, selected.column("query_ids").to_pylist()):
        assert ids == reference(text, lang, queries_of, langs_of), (text, lang)
    assert sum(by_language[lang]["pairs_selected"] for lang in entries) == selected.num_rows

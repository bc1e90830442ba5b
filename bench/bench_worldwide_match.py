"""Worldwide matching throughput (issue 24): captions/s/core of the per-language matcher on a
mixed-language caption set, against the English-only matcher on English captions. Goal: >= 0.8x.

    python bench/bench_worldwide_match.py [--captions 200000] [--repeats 3]

Query lists: English, the full-size list of ``bench_match.py`` (the demo's, or pywordfreq
unigrams >= 100 + WordNet heads); Spanish, French, Chinese, Japanese: ``wordfreq``'s 50,000 most
frequent words of each (real frequency lists; its Chinese and Japanese words are segmented
units, matched by raw substring). Captions: real Wikipedia lead-paragraph sentences of the sample
data cut at word boundaries to <= 60 characters for en, es, fr; for zh and ja, for want of real
sentences offline, 3-8 of the language's top-5,000 words drawn by frequency and joined without
spaces (real words, made-up sentences). Mix: 50 % en, 20 % es, 15 % fr, 10 % zh, 5 % ja, in
batches of ``--batch`` rows, each row with its language (as the text stage gives it). One core
(Arrow's pool at one thread); rates by wall and by CPU time; the English rows of the worldwide
run are checked equal to the English-only matcher's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_match import best_rate, full_size_queries, real_captions, wiki_sentences  # noqa: E402
from curation.text.match import QueryMatcher, WorldwideMatcher  # noqa: E402
from pipelines.demo.sample_data import load_manifest  # noqa: E402

GOAL = 0.8
MIX = {"en": 0.50, "es": 0.20, "fr": 0.15, "zh": 0.10, "ja": 0.05}


def no_space_captions(language: str, n: int, rng: np.random.Generator) -> list[str]:
    import wordfreq

    frequencies = wordfreq.get_frequency_dict(language)  # no tokenizer needed (MeCab is not installed)
    words = sorted(frequencies, key=lambda w: (-frequencies[w], w))[:5000]
    weights = np.array([frequencies[w] for w in words])
    weights /= weights.sum()
    picks = rng.choice(len(words), size=(n, 8), p=weights)
    lengths = rng.integers(3, 9, n)
    return ["".join(words[i] for i in row[:k]) for row, k in zip(picks, lengths)]


def main(argv: list[str] | None = None) -> dict:
    import wordfreq

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=65_536)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    pa.set_cpu_count(1)
    rng = np.random.default_rng(0)
    manifest = load_manifest()
    english, source = full_size_queries(manifest)
    lists = {"en": english, **{lang: wordfreq.top_n_list(lang, 50_000) for lang in ("es", "fr", "zh", "ja")}}
    queries = [q for lang in sorted(lists) for q in lists[lang]]
    languages = [lang for lang in sorted(lists) for _ in lists[lang]]

    pools = {"en": real_captions(manifest, args.captions), "es": wiki_sentences(manifest["wiki_summaries_es"]),
             "fr": wiki_sentences(manifest["wiki_summaries_fr"]), "zh": no_space_captions("zh", 20_000, rng),
             "ja": no_space_captions("ja", 20_000, rng)}
    row_languages = rng.choice(list(MIX), size=args.captions, p=list(MIX.values()))
    texts, at = [], {lang: 0 for lang in MIX}
    for lang in row_languages:
        pool = pools[lang]
        texts.append(pool[at[lang] % len(pool)])
        at[lang] += 1
    mixed = pa.array(texts, pa.string())
    mixed_languages = pa.array(row_languages.tolist(), pa.string())
    english_texts = pa.array(pools["en"][: args.captions], pa.string())

    started = time.perf_counter()
    english_matcher = QueryMatcher(english)
    build_en = time.perf_counter() - started
    started = time.perf_counter()
    worldwide = WorldwideMatcher(queries, languages)
    build_ww = time.perf_counter() - started

    def batches(array):
        return [array.slice(i, args.batch) for i in range(0, len(array), args.batch)]

    english_batches, mixed_batches, language_batches = batches(english_texts), batches(mixed), batches(mixed_languages)
    # the worldwide matcher's English rows equal the English-only matcher's (global ids = English ids + offset)
    offset = languages.index("en")
    ww = [ids for b, lb in zip(mixed_batches, language_batches) for ids in worldwide.match_arrow(b, lb).to_pylist()]
    is_en = row_languages == "en"
    en_only = english_matcher.match_arrow(mixed.filter(pa.array(is_en))).to_pylist()
    assert [[i - offset for i in ids] for ids, e in zip(ww, is_en) if e] == en_only

    rate_en, cpu_en = best_rate(lambda: [english_matcher.match_arrow(b) for b in english_batches], len(english_texts),
                                args.repeats)
    rate_ww, cpu_ww = best_rate(lambda: [worldwide.match_arrow(b, lb) for b, lb in zip(mixed_batches, language_batches)],
                                len(mixed), args.repeats)
    per_language = {}
    for lang in MIX:
        rows = pa.array(np.flatnonzero(row_languages == lang))
        sub, sub_lang = mixed.take(rows), mixed_languages.take(rows)
        rate, cpu = best_rate(lambda: [worldwide.match_arrow(b, lb) for b, lb in zip(batches(sub), batches(sub_lang))],
                              len(sub), 1)
        per_language[lang] = {"captions_per_s": round(rate), "captions_per_cpu_s": round(cpu),
                              "matches_per_caption": round(sum(len(ids) for ids, ll in zip(ww, row_languages) if ll == lang)
                                                           / max(1, len(sub)), 2)}
    result = {
        "entries": {lang: len(q) for lang, q in lists.items()}, "english_list": source, "captions": len(texts),
        "mix": MIX, "build_s": {"english": round(build_en, 2), "worldwide": round(build_ww, 2)},
        "captions_per_s": {"english_only": round(rate_en), "worldwide_mixed": round(rate_ww)},
        "captions_per_cpu_s": {"english_only": round(cpu_en), "worldwide_mixed": round(cpu_ww)},
        "per_language": per_language,
        "ratio": {"wall": round(rate_ww / rate_en, 3), "cpu": round(cpu_ww / cpu_en, 3), "goal": GOAL},
    }
    print(json.dumps(result, indent=2))
    print(f"worldwide mixed: {rate_ww:,.0f} captions/s/core vs English-only {rate_en:,.0f}: "
          f"{rate_ww / rate_en:.2f}x (CPU time {cpu_ww / cpu_en:.2f}x); goal >= {GOAL}x")
    return result


if __name__ == "__main__":
    main()

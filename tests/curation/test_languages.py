"""The lid.176 → Wikipedia mapping (curation/text/lid_to_wiki.tsv) and the text stage's worldwide
filter (``TextConfig.languages``) on real multilingual captions.

Real text: the sample data's English, Spanish and French Wikipedia lead paragraphs, and for
Chinese (both scripts), Japanese, Thai, German and Russian the translated messages of apt's
gettext catalog (``/usr/share/locale/<locale>/LC_MESSAGES/apt.mo``, shipped by Debian's ``apt``,
present on every Debian system): sentences written by people, caption-sized.
"""

from __future__ import annotations

import gettext
import hashlib
import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from curation.stage import REASON, REASONS, reason_counts
from curation.text.languages import (
    MAPPING_FILE,
    check_languages,
    check_model_labels,
    lid_to_wiki,
    read_mapping,
    wiki_code,
    wiki_languages,
)
from curation.text.textfilter import LanguageIdentifier, TextConfig, TextFilter

APT_LOCALES = {"zh": ("zh_CN", "zh_TW"), "ja": ("ja",), "th": ("th",), "de": ("de",), "ru": ("ru",)}


def apt_messages(locale: str, limit: int) -> list[str]:
    """The first ``limit`` (sorted) translated messages of apt's catalog for ``locale`` with their
    printf / brace placeholders, quotes and brackets removed, 20 characters or more."""
    with open(f"/usr/share/locale/{locale}/LC_MESSAGES/apt.mo", "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    texts = set()
    for key, value in catalog.items():
        if key and isinstance(value, str):
            value = re.sub(r"%(\d+\$)?[-+ #0]*\d*(\.\d+)?[lhz]*[a-zA-Z]|\{[^}]*\}|[\\<>'\"`()\[\]]", " ", value)
            value = " ".join(value.split())
            if len(value) >= 20:
                texts.add(value)
    return sorted(texts)[:limit]


def wiki_sentences(path: str, limit: int) -> list[str]:
    """The first sentence (at most 200 characters) of the first ``limit`` lead paragraphs."""
    with open(path, encoding="utf-8") as f:
        return [v["extract"].split(". ")[0][:200] for v in list(json.load(f).values())[:limit]]


@pytest.fixture(scope="module")
def captions(sample) -> dict[str, list[str]]:
    """Real captions by true language: en/es/fr from Wikipedia, the others from apt's catalogs."""
    texts = {lang: wiki_sentences(sample[f"wiki_summaries_{lang}"], 60) for lang in ("en", "es", "fr")}
    for lang, locales in APT_LOCALES.items():
        texts[lang] = [t for loc in locales for t in apt_messages(loc, 30)]
    return texts


def caption_table(captions: dict[str, list[str]]) -> pa.Table:
    """A pool-like table of every caption (uid = language/index), plus rows every rule rejects
    and one rejected upstream (``null_url``), which passes through unchanged."""
    rows = [(f"{lang}/{i:03d}", t) for lang, texts in captions.items() for i, t in enumerate(texts)]
    rows += [("bad/empty", "   "), ("bad/short", "x"), ("bad/long", "word " * 300), ("bad/url", "a photo of a cat"),
             ("bad/mojibake", "caf\u00c3\u00a9 &amp; more photos of the old town")]
    uids, texts = zip(*rows)
    reasons = ["null_url" if u == "bad/url" else "" for u in uids]
    return pa.table({"uid": list(uids), "url": [f"http://127.0.0.1/{u}.jpg" for u in uids], "text": list(texts),
                     REASON: reasons})


def table_digest(table: pa.Table) -> str:
    """sha256 of the table's schema and values (a canonical JSON, independent of Arrow's IPC bytes)."""
    body = json.dumps({"schema": str(table.schema), "rows": table.to_pydict()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


# the English-only output of caption_table(captions) (TextConfig()), computed with the text stage as
# it was before worldwide filtering existed (commit 916d636): English runs must stay byte-identical.
# A deliberate change of the English path recomputes it: table_digest(TextFilter(TextConfig())(...)).
ENGLISH_ONLY_DIGEST = "e8d30f6b2b6415141a8f1916cb687bfc7beb7a362973e45d764bbda082f02f19"


def test_mapping_covers_exactly_the_models_labels():
    labels = LanguageIdentifier().labels()
    assert len(labels) == 176 and set(lid_to_wiki()) == set(labels)
    check_model_labels(labels)
    with pytest.raises(ValueError, match=r"labels \['xx'\] are not in"):
        check_model_labels([*labels, "__label__xx"])


def test_documented_decisions_hold():
    mapping = lid_to_wiki()
    # Chinese: one label for both scripts -> zh; Cantonese and Wu are labels with their own wikis
    assert mapping["zh"] == "zh" and wiki_code("__label__yue") == "zh-yue" and wiki_code("wuu") == "wuu"
    # Norwegian: no (Bokmål, the no wiki) and nn (Nynorsk) stay apart; nb is no label
    assert (mapping["no"], mapping["nn"]) == ("no", "nn") and "nb" not in mapping
    # Serbo-Croatian has its own wiki, beside sr / hr / bs
    assert [mapping[c] for c in ("sh", "sr", "hr", "bs")] == ["sh", "sr", "hr", "bs"]
    # macrolanguages map to the wiki of that name; a member with its own label keeps its own wiki
    assert [mapping[c] for c in ("ms", "id", "min", "ar", "arz", "ku", "ckb", "fa", "sw", "mn", "qu")] == [
        "ms", "id", "min", "ar", "arz", "ku", "ckb", "fa", "sw", "mn", "qu"]
    # Wikipedia's own codes, whatever ISO 639 says they mean (als: Alemannic, not Tosk Albanian)
    assert [mapping[c] for c in ("als", "bh", "eml", "nah", "diq", "cbk")] == ["als", "bh", "eml", "nah", "diq",
                                                                            "cbk-zam"]
    # every row that is not the identity, and every decision above, is explained in the file
    lines = MAPPING_FILE.read_text(encoding="utf-8").splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in lines if not line.startswith("#")}
    non_identity = sorted(label for label, code in mapping.items() if code != label)
    assert non_identity == ["cbk", "yue"]
    for label in ("cbk", "yue", "zh", "no", "nn", "sh", "ms", "als", "bh", "eml", "nah", "lrc"):
        assert len(rows[label][2]) > 40, rows[label]
    header = "\n".join(line for line in lines if line.startswith("#"))
    for provenance in ("get_labels()", "md5 340156704bb8c8e50c4abf35a7ec2569", "pywikibot 11.9.0", "2026-12-06"):
        assert provenance in header
    assert {"zh", "zh-yue", "no", "nn", "sh", "cbk-zam"} <= wiki_languages()


def test_mapping_files_are_checked(tmp_path):
    def mapping(*lines: str) -> str:
        path = tmp_path / "m.tsv"
        path.write_text("\n".join(["# a comment", "lid_label\twiki_code\tnote", *lines]) + "\n", encoding="utf-8")
        return str(path)

    assert read_mapping(mapping("en\ten\t", "yue\tzh-yue\tthe wiki's code", "xx\t\tno wiki")) == {
        "en": "en", "yue": "zh-yue", "xx": ""}
    for lines, error in [(("en\ten",), "2 fields"), (("en\ten\t", "en\ten\t"), "listed twice"),
                         (("yue\tzh-yue\t",), "note must say why"), (("xx\t\t ",), "note must say why"),
                         (("en\tEN wiki\tx",), "malformed Wikipedia code"), (("English\ten\tx",), "malformed lid")]:
        with pytest.raises(ValueError, match=error):
            read_mapping(mapping(*lines))
    with pytest.raises(KeyError, match="'xx' is not in"):
        wiki_code("xx")


def test_languages_setting_is_checked():
    assert TextConfig(languages=("en", "zh-yue")).languages == ("en", "zh-yue")
    assert TextConfig(language="fr", languages=("fr", "de")).language == "fr"  # agrees: fine
    check_languages(["en", "zh", "no", "nn"])
    with pytest.raises(ValueError, match=r"use the wiki's code: yue -> zh-yue"):
        TextConfig(languages=("en", "yue"))
    with pytest.raises(ValueError, match=r"\['nb'\]: no lid.176 label maps"):
        TextConfig(languages=("nb",))
    with pytest.raises(ValueError, match="language=None turns off"):
        TextConfig(language=None, languages=("en",))
    with pytest.raises(ValueError, match="language='de' conflicts"):
        TextConfig(language="de", languages=("fr",))
    assert "uncertain_language" in REASONS["text"] and "unwanted_language" in REASONS["text"]


def test_worldwide_filter_on_real_captions(captions):
    wanted = ("en", "es", "fr", "zh", "ja")
    table = caption_table(captions)
    out = TextFilter(TextConfig(languages=wanted))(table)
    assert out.column_names == ["uid", "url", "text", REASON, "language"]
    assert out.schema.field("language").type == pa.string() and out.num_rows == table.num_rows
    uids = np.array(out.column("uid").to_pylist())
    reasons = np.array(out.column(REASON).to_pylist(), dtype=object)
    language = np.array(out.column("language").to_pylist(), dtype=object)
    group = np.array([u.split("/")[0] for u in uids])
    # kept rows, and only they, carry a wanted wiki code
    assert all((lang in wanted) == (r == "") for lang, r in zip(language, reasons)), Counter(zip(language, reasons))
    for lang in wanted:  # real captions of a wanted language are kept as that language
        rows = group == lang
        assert np.mean(language[rows] == lang) >= 0.9, (lang, Counter(zip(language[rows], reasons[rows])))
    zh_scripts = list(uids[group == "zh"])  # zh_CN then zh_TW messages: both scripts -> zh
    assert np.mean(language[np.isin(uids, zh_scripts[:30])] == "zh") >= 0.9
    assert np.mean(language[np.isin(uids, zh_scripts[30:])] == "zh") >= 0.9
    for lang in ("th", "de", "ru"):  # the others are rejected as unwanted, with no language
        rows = group == lang
        assert np.mean(reasons[rows] == "unwanted_language") >= 0.9, (lang, Counter(reasons[rows]))
    # the text rules and upstream reasons are those of the English path
    bad = {u: r for u, r in zip(uids, reasons) if u.startswith("bad/")}
    assert bad == {"bad/empty": "empty_text", "bad/short": "text_too_short", "bad/long": "text_too_long",
                   "bad/url": "null_url", "bad/mojibake": ""}
    assert language[uids == "bad/mojibake"][0] == "en"
    assert sum(reason_counts(out).values()) == table.num_rows
    # a threshold no label reaches: every live row is uncertain, none unwanted
    strict = TextFilter(TextConfig(languages=wanted, lid_threshold=1.01))(table)
    assert set(reason_counts(strict)) == {"uncertain_language", "empty_text", "text_too_short", "text_too_long",
                                          "null_url"}
    assert strict.column("language").null_count == table.num_rows


def test_worldwide_replaces_a_pool_language_column():
    table = pa.table({"uid": ["a", "b"], "url": ["u1", "u2"],
                      "text": ["A red bicycle leaning against a wall", "Ein rotes Fahrrad an einer Wand"],
                      "language": ["xx", "yy"]})
    out = TextFilter(TextConfig(languages=("en",)))(table)
    assert out.column_names == ["uid", "url", "text", "language", REASON]
    assert out.column("language").to_pylist() == ["en", None]
    assert out.column(REASON).to_pylist() == ["", "unwanted_language"]
    empty = TextFilter(TextConfig(languages=("en",)))(table.slice(0, 0))
    assert empty.schema.field("language").type == pa.string() and empty.num_rows == 0


def test_english_only_output_unchanged(captions):
    table = caption_table(captions)
    out = TextFilter(TextConfig())(table)
    assert TextConfig().languages == () and "language" not in out.column_names
    assert table_digest(out) == ENGLISH_ONLY_DIGEST
    assert table_digest(TextFilter(TextConfig(language="en", languages=()))(table)) == ENGLISH_ONLY_DIGEST

"""Titles (pageview dumps in the real hourly format, title lists) and WordNet names."""

from __future__ import annotations

import gzip

import pytest

from queries.titles import (
    TitleSourceError,
    read_pageview_file,
    read_title_list,
    select_titles,
    titles_from_pageviews,
)
from queries.wordnet import WordNetError, read_wordnet

# Two hours of pageviews in the dump format: `domain_code page_title count_views response_size`.
HOUR_0 = (
    b"en Albert_Einstein 120 0\n"
    b"en.m Albert_Einstein 300 0\n"
    b"de Albert_Einstein 999 0\n"  # other project
    b"commons.m File:Cat.jpg 50 0\n"  # other project
    b"en Special:Search 5000 0\n"  # ':' title, dropped at selection
    b"en Main_Page 9000 0\n"
    b"en Caf\xc3\xa9_society 700 0\n"
    b"en Short_line 7\n"  # short
    b"en Bad_count many 0\n"  # non-numeric
    b"en Caf\xe9_Latin1 40 0\n"  # not UTF-8
    b"en Too many fields 3 0\n"  # 5 fields
    b"en Washington,_D.C. 2000 0\n"  # unmatchable under the spacing rule
    b"en Rare_page 3 0\n"
)
HOUR_1 = b"en Albert_Einstein 80 0\nen.m Rare_page 4 0\nen.m Caf\xc3\xa9_society 400 0\nen -1 0\n"


@pytest.fixture()
def pageview_files(tmp_path):
    paths = []
    for name, data in (("pageviews-20240101-000000.gz", HOUR_0), ("pageviews-20240101-010000.gz", HOUR_1)):
        path = tmp_path / name
        path.write_bytes(gzip.compress(data))
        paths.append(str(path))
    return paths


def test_pageview_file_lines_accounted(pageview_files):
    table, stats = read_pageview_file(pageview_files[0])
    assert stats.lines == 13
    assert stats.other_project == 2
    assert stats.bad == {"short": 1, "extra_fields": 1, "non_numeric": 1, "bad_utf8": 1}
    assert stats.kept == 7
    assert stats.lines == stats.kept + stats.other_project + sum(stats.bad.values())
    assert dict(zip(table["title"].to_pylist(), table["views"].to_pylist()))["Albert Einstein"] == 420


def test_pageviews_summed_and_selected(pageview_files):
    views, stats = titles_from_pageviews(pageview_files)
    assert stats.files == 2 and stats.lines == 17 and stats.bad["short"] == 2
    by_title = dict(zip(views["title"].to_pylist(), views["views"].to_pylist()))
    assert by_title == {
        "Albert Einstein": 500,
        "Café society": 1100,
        "Main Page": 9000,
        "Rare page": 7,
        "Special:Search": 5000,
        "Washington, D.C.": 2000,
    }
    kept, dropped = select_titles(views, min_views=100)
    assert kept["title"].to_pylist() == ["Albert Einstein", "Café society", "Main Page"]
    assert dropped == {"colon": 1, "unmatchable": 1, "below_min_views": 1}


def test_bad_pageview_file_named(tmp_path):
    broken = tmp_path / "pageviews-20240101-020000.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(TitleSourceError, match="pageviews-20240101-020000.gz: unreadable"):
        read_pageview_file(broken)


def test_title_list(sample, tmp_path):
    titles = read_title_list(sample["wiki_titles"])
    assert titles.num_rows == 10_033 and titles["views"].null_count == 10_033
    kept, dropped = select_titles(titles, min_views=10**9)  # views unknown: threshold not applied
    assert dropped["colon"] == 1 and kept.num_rows + sum(dropped.values()) == 10_033
    plain = tmp_path / "titles.txt"
    plain.write_text("Hot_dog\nParis\n\nParis\n")
    assert read_title_list(plain)["title"].to_pylist() == ["Hot dog", "Paris"]


@pytest.fixture(scope="module")
def wordnet(sample):
    return read_wordnet(sample["wordnet_dir"])


def test_wordnet_heads(wordnet):
    assert wordnet.synsets == 117_659
    # MetaCLIP reports 86,654 from NLTK's copy of WordNet 3.0; Debian's files give 86,571.
    assert len(wordnet.names) == 86_571
    names = set(wordnet.names)
    assert {"dog", "physical entity", "living thing", "unable", "abaxial", "entity"} <= names
    assert not any(n.endswith(("(a)", "(p)", "(ip)")) or "_" in n for n in names)
    assert all(n == n.lower() for n in wordnet.names)
    assert wordnet.names == sorted(wordnet.names)


def test_wordnet_all_lemmas(sample, wordnet):
    lemmas = read_wordnet(sample["wordnet_dir"], all_lemmas=True)
    assert lemmas.synsets == 117_659 and len(lemmas.names) > len(wordnet.names)
    assert {"frankfurter", "ventral", "Einstein"} <= set(lemmas.names)


def test_wordnet_missing_file(tmp_path):
    (tmp_path / "data.noun").write_text("  licence header\n")
    with pytest.raises(WordNetError, match="data.verb: WordNet data file not found"):
        read_wordnet(tmp_path)
    (tmp_path / "data.verb").write_text("garbage line\n")
    for name in ("data.adj", "data.adv"):
        (tmp_path / name).write_text("")
    with pytest.raises(WordNetError, match="data.verb:1: not a WordNet data line"):
        read_wordnet(tmp_path)

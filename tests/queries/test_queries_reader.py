"""The dump reader and wikitext stripping, on the real gensim enwiki sample."""

from __future__ import annotations

import bz2
from pathlib import Path

import pytest

from queries.corpus import CorpusError, DocumentSource, iter_document_batches
from queries.wikidump import DumpStats, WikiDumpError, iter_pages
from queries.wikitext import WikitextStripper, strip_wikitext


@pytest.fixture(scope="module")
def pages(sample):
    stats = DumpStats()
    pages = {title: text for _, title, text in iter_pages(sample["wiki_dump"], stats)}
    return pages, stats


def test_sample_page_counts(pages):
    found, stats = pages
    # 206 <page>s: 106 articles, 99 article redirects, 1 page outside namespace 0 (a redirect too).
    assert (stats.pages, stats.articles, stats.redirects, stats.other_namespace) == (206, 106, 99, 1)
    assert len(found) == 106
    assert "Anarchism" in found and "AccessibleComputing" not in found  # the latter is a redirect
    assert stats.wikitext_bytes == sum(len(t.encode()) for t in found.values())


def test_batches_cover_every_article(sample):
    batches = list(iter_document_batches(DocumentSource(sample["wiki_dump"], "wiki_dump"), batch_size=32))
    assert [b.num_rows for b in batches] == [32, 32, 32, 10]
    assert all(b.column("wikitext").to_pylist() == [True] * b.num_rows for b in batches)


def test_markup_stripped_on_real_pages(pages):
    found, _ = pages
    plain = {title: strip_wikitext(text) for title, text in found.items()}
    anarchism = plain["Anarchism"]
    assert "Anarchism is a political philosophy that advocates self-governed societies" in anarchism
    # [[Maximilien de Robespierre|Robespierre]] -> label; [[French Revolution]] -> target
    assert "(as Robespierre did the Hébertists)" in anarchism
    assert "within the French Revolution labelled" in anarchism
    assert "WilliamGodwin.jpg" not in anarchism  # [[File:...]] removed with its caption
    assert "Category:" not in anarchism and "etymonline" not in anarchism  # categories, refs
    for text in plain.values():
        for marker in ("{{", "}}", "[[", "]]", "<ref", "</ref>", "&lt;", "&quot;", "'''", "{|", "http://"):
            assert marker not in text, marker


def test_strip_rules():
    text = (
        "== History ==\n'''Bold''' and ''it'' [[a|b]] [[c]] {{cite|x={{y}}}} [[File:p.jpg|thumb|[[d]] cap]]"
        "<ref name=x>note</ref><ref name=y/> [http://e.org label] <!-- c --> &amp; x<br/>y\n"
        "{| class=t\n|-\n| cell\n|}\n* item [[de:Anarchismus]] [[Category:Foo]]"
    )
    assert strip_wikitext(text) == "History\nBold and it b c   label  & xy\n\nitem  "
    assert strip_wikitext("[[File:a.jpg|thumb|the [and] Bicyclo[1.1.0]butane [[x]].]] after") == " after"


def test_stripper_stage_keeps_rows():
    from queries.wikidump import _to_batch

    batch = _to_batch("s", [("1", "A", "[[x|y]] z"), ("2", "B", "plain [[text]]")], wikitext=True)
    out = WikitextStripper()(batch)
    assert out.num_rows == 2 and out.column("text").to_pylist() == ["y z", "plain text"]
    assert out.column("wikitext").to_pylist() == [False, False]


def test_truncated_bz2_names_file(sample, tmp_path):
    data = Path(sample["wiki_dump"]).read_bytes()
    bad = tmp_path / "truncated.xml.bz2"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WikiDumpError, match="truncated.xml.bz2: truncated"):
        list(iter_pages(bad))


def test_non_xml_names_file(tmp_path):
    bad = tmp_path / "notes.xml"
    bad.write_text("this is not xml at all\n")
    with pytest.raises(WikiDumpError, match="notes.xml: not a well-formed MediaWiki XML dump"):
        list(iter_pages(bad))
    other = tmp_path / "other.xml"
    other.write_text("<html><body/></html>")
    with pytest.raises(WikiDumpError, match="other.xml: .*expected <mediawiki>"):
        list(iter_pages(other))


def test_empty_dumps_name_file(tmp_path):
    empty = tmp_path / "empty.xml.bz2"
    empty.write_bytes(bz2.compress(b""))
    with pytest.raises(WikiDumpError, match="empty.xml.bz2: empty dump"):
        list(iter_pages(empty))
    no_pages = tmp_path / "nopages.xml"
    no_pages.write_text('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><siteinfo/></mediawiki>')
    with pytest.raises(WikiDumpError, match="nopages.xml: empty dump"):
        list(iter_pages(no_pages))
    with pytest.raises(WikiDumpError, match="missing.xml: no such dump file"):
        list(iter_pages(tmp_path / "missing.xml"))


def test_text_corpus_shapes(sample, tmp_path):
    docs = list(iter_document_batches(DocumentSource(sample["wiki_summaries_en"], "text")))
    assert sum(b.num_rows for b in docs) == 10_033
    lines = tmp_path / "c.txt"
    lines.write_text("first doc\n\nsecond doc\n")
    (batch,) = iter_document_batches(DocumentSource(str(lines), "text"))
    assert batch.column("text").to_pylist() == ["first doc", "second doc"]
    broken = tmp_path / "c.json"
    broken.write_text("{not json")
    with pytest.raises(CorpusError, match="c.json: unreadable corpus"):
        list(iter_document_batches(DocumentSource(str(broken), "text")))


def test_multistream_bz2(sample, tmp_path):
    """A -multistream dump is concatenated bz2 streams (header, page groups, footer)."""
    xml = bz2.open(sample["wiki_dump"]).read()
    first, end = xml.index(b"  <page>"), xml.rindex(b"</mediawiki>")
    middle = xml.index(b"  <page>", (first + end) // 2)
    multi = tmp_path / "enwiki-multistream.xml.bz2"
    multi.write_bytes(b"".join(bz2.compress(part) for part in (xml[:first], xml[first:middle], xml[middle:end], xml[end:])))
    stats = DumpStats()
    assert len(list(iter_pages(multi, stats))) == 106 and stats.pages == 206

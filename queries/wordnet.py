"""WordNet 3.0 synset names, read straight from the ``data.{noun,verb,adj,adv}`` files.

Line format (wndb(5WN)): ``synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
p_cnt ...`` with ``w_cnt`` in hex; lines starting with two spaces are the licence header.
Adjective words may carry a syntactic marker ``(a)``, ``(p)`` or ``(ip)``, which is stripped.

A synset's *head name* is what MetaCLIP takes from NLTK: ``synset.name()`` (e.g. ``dog.n.01``)
up to the first dot — NLTK builds it from the synset's first lemma, lowercased — with ``_``
turned into a space. WordNet 3.0's 117,659 synsets give 86,571 distinct head names here
(MetaCLIP reports 86,654 from its NLTK copy). ``all_lemmas=True`` takes every lemma of every
synset instead (case kept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from storage.files import is_input_file, join, open_input_text

DATA_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


class WordNetError(ValueError):
    """WordNet files that cannot be read; the message names the file."""


@dataclass
class WordNetNames:
    """The names read from WordNet and how many synsets they came from."""

    names: list[str]  # distinct names, sorted
    synsets: int  # synset lines read


def _synset_words(line: str, path: str, lineno: int) -> list[str]:
    fields = line.split(" ", 4 + 2 * 255)
    try:
        w_cnt = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(w_cnt)]
    except (IndexError, ValueError) as err:
        raise WordNetError(f"{path}:{lineno}: not a WordNet data line ({err})") from err
    return [_ADJ_MARKER.sub("", w) for w in words]


def read_wordnet(wordnet_dir: str | Path, all_lemmas: bool = False) -> WordNetNames:
    """Distinct head names (or all lemma names) of every synset in ``wordnet_dir``'s data files."""
    names: set[str] = set()
    synsets = 0
    for filename in DATA_FILES:
        path = join(str(wordnet_dir), filename)
        if not is_input_file(path):
            raise WordNetError(f"{path}: WordNet data file not found (install Debian wordnet-base)")
        with open_input_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("  ") or not line.strip():
                    continue
                words = _synset_words(line, path, lineno)
                synsets += 1
                if all_lemmas:
                    names.update(w.replace("_", " ") for w in words)
                else:
                    names.add(words[0].lower().replace("_", " "))
    return WordNetNames(sorted(names), synsets)


def wordnet_table(names: WordNetNames) -> pa.Table:
    """The names as a one-column (``query``) Arrow table."""
    return pa.table({"query": pa.array(names.names, pa.string())})


def read_language_wordnet(path: str | Path, all_lemmas: bool = False) -> WordNetNames:
    """The head names (or all lemma names) of a WordNet of any language (a worldwide list's):

    - a directory with Princeton's ``data.*`` files: :func:`read_wordnet`;
    - an Open Multilingual Wordnet tab file (``.tab``: ``synset<TAB>[lang:]lemma<TAB>name`` lines,
      other types such as ``def``/``exe`` and ``#`` lines skipped);
    - a SQLite database (``.db``, local) with a ``word_synset(synsetid, li)`` table (the Thai
      WordNet that pythainlp ships).

    A synset's head name is its first lemma in file (row) order, lowercased, ``_`` -> space;
    ``all_lemmas``: every lemma name, case kept, ``_`` -> space."""
    path = str(path)
    if is_input_file(join(path, DATA_FILES[0])):
        return read_wordnet(path, all_lemmas)
    if path.endswith(".db"):
        pairs = _sqlite_pairs(path)
    elif path.endswith(".tab") or path.endswith(".tab.gz"):
        pairs = _tab_pairs(path)
    else:
        raise WordNetError(f"{path}: not a WordNet (a directory of data.* files, an OMW .tab file or a .db)")
    heads: dict[str, str] = {}
    names: set[str] = set()
    synsets: set[str] = set()
    for synset, lemma in pairs:
        lemma = lemma.strip()
        if not lemma:
            continue
        synsets.add(synset)
        names.add(lemma.replace("_", " "))
        if synset not in heads:
            heads[synset] = lemma.lower().replace("_", " ")
    return WordNetNames(sorted(names if all_lemmas else set(heads.values())), len(synsets))


def _tab_pairs(path: str):
    if not is_input_file(path):
        raise WordNetError(f"{path}: WordNet tab file not found")
    try:
        with open_input_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if line.startswith("#") or not line.strip():
                    continue
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 3:
                    raise WordNetError(f"{path}:{lineno}: not an OMW tab line (synset, type, name)")
                if fields[1].rsplit(":", 1)[-1] == "lemma":
                    yield fields[0], fields[2]
    except UnicodeDecodeError as err:
        raise WordNetError(f"{path}: not UTF-8 ({err})") from err


def _sqlite_pairs(path: str):
    import sqlite3

    if not Path(path).is_file():
        raise WordNetError(f"{path}: WordNet database not found (a local file)")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT synsetid, li FROM word_synset ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError as err:
        raise WordNetError(f"{path}: not a WordNet database with a word_synset table ({err})") from err
    yield from rows

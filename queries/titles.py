"""Wikipedia article titles: from pageview dumps (summed views) or from a plain title list.

Pageview dumps (https://dumps.wikimedia.org/other/pageviews/, hourly
``pageviews-YYYYMMDD-HH0000.gz``) hold one line per (project, page):
``domain_code page_title count_views total_response_size``, e.g. ``en.m Albert_Einstein 42 0``.
We keep the English Wikipedia projects (``en`` desktop, ``en.m`` mobile; a worldwide list: each
language's ``<code>`` and ``<code>.m``), turn ``_`` into
spaces and sum the views of a title over all lines and files. Lines with fewer or more than four
fields, a non-numeric count, or are not valid UTF-8 are counted as bad and skipped; lines of other
projects are counted as ``other_project``. Every line lands in exactly one counter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from queries.text import is_matchable
from storage.files import open_input, open_input_text

ENGLISH_PROJECTS = frozenset({b"en", b"en.m"})
VIEWS_SCHEMA = pa.schema([("title", pa.string()), ("views", pa.int64())])


class TitleSourceError(ValueError):
    """A title source that cannot be read; the message names the file."""


@dataclass
class PageviewStats:
    """Line accounting of the pageview files: ``lines == kept + other_project + sum(bad)``."""

    files: int = 0
    lines: int = 0
    kept: int = 0  # English Wikipedia lines whose views were summed
    other_project: int = 0  # lines of other wikis / projects (de, commons.m, en.d, ...)
    bad: dict[str, int] = field(
        default_factory=lambda: {"short": 0, "extra_fields": 0, "non_numeric": 0, "bad_utf8": 0}
    )

    def add(self, other: PageviewStats) -> None:
        """Accumulate another file's counters into this one."""
        self.files += other.files
        self.lines += other.lines
        self.kept += other.kept
        self.other_project += other.other_project
        for key, value in other.bad.items():
            self.bad[key] = self.bad.get(key, 0) + value


def wikipedia_projects(languages) -> dict[bytes, str]:
    """The pageview domain codes of each language's Wikipedia: ``<code>`` (desktop) and
    ``<code>.m`` (mobile) -> ``code``."""
    return {f"{code}{suffix}".encode(): code for code in languages for suffix in ("", ".m")}


def read_language_pageviews(path: str | Path, projects: dict[bytes, str]) -> tuple[dict[str, pa.Table], PageviewStats]:
    """One pageview dump file (.gz or plain) -> ({language: :data:`VIEWS_SCHEMA` table of views
    summed per title within the file}, its :class:`PageviewStats`), for the domain codes of
    ``projects`` (:func:`wikipedia_projects`); lines of other domains count as ``other_project``.
    Raises :class:`TitleSourceError` naming the file if it is missing or not a readable gzip stream."""
    path = str(path)
    stats = PageviewStats(files=1)
    views: dict[str, dict[str, int]] = {code: {} for code in dict.fromkeys(projects.values())}
    try:
        with open_input(path) as f:
            for raw in f:
                stats.lines += 1
                parts = raw.split()
                if len(parts) != 4:
                    stats.bad["short" if len(parts) < 4 else "extra_fields"] += 1
                    continue
                language = projects.get(parts[0])
                if language is None:
                    stats.other_project += 1
                    continue
                if not parts[2].isdigit():
                    stats.bad["non_numeric"] += 1
                    continue
                try:
                    title = parts[1].decode("utf-8").replace("_", " ")
                except UnicodeDecodeError:
                    stats.bad["bad_utf8"] += 1
                    continue
                stats.kept += 1
                mine = views[language]
                mine[title] = mine.get(title, 0) + int(parts[2])
    except FileNotFoundError as err:
        raise TitleSourceError(f"{path}: no such pageview file") from err
    except (OSError, EOFError) as err:
        raise TitleSourceError(f"{path}: unreadable pageview file ({err})") from err
    tables = {code: pa.table({"title": list(v), "views": list(v.values())}, schema=VIEWS_SCHEMA)
              for code, v in views.items()}
    return tables, stats


def read_pageview_file(path: str | Path) -> tuple[pa.Table, PageviewStats]:
    """One pageview dump file (.gz or plain) -> (:data:`VIEWS_SCHEMA` table of views summed per
    English Wikipedia title within the file, its :class:`PageviewStats`). Raises
    :class:`TitleSourceError` naming the file if it is missing or not a readable gzip stream."""
    tables, stats = read_language_pageviews(path, {project: "en" for project in ENGLISH_PROJECTS})
    return tables["en"], stats


def sum_views(tables: list[pa.Table]) -> pa.Table:
    """Sum per-file view tables by title (sorted by title)."""
    if not tables:
        return VIEWS_SCHEMA.empty_table()
    summed = pa.concat_tables(tables).group_by("title").aggregate([("views", "sum")])
    return summed.rename_columns(["title", "views"]).cast(VIEWS_SCHEMA).sort_by("title")


def read_title_list(path: str | Path) -> pa.Table:
    """A plain title list -> :data:`VIEWS_SCHEMA` table with null views, de-duplicated and sorted.
    ``.json``: the keys of an object (ovos ``titles_en-us.json``) or a list of strings; anything
    else: one title per non-empty line (``_`` -> space; lines starting with ``#`` are comments)."""
    path = str(path)
    try:
        with open_input_text(path) as f:
            text = f.read()
    except FileNotFoundError as err:
        raise TitleSourceError(f"{path}: no such title list") from err
    except UnicodeDecodeError as err:
        raise TitleSourceError(f"{path}: title list is not UTF-8 ({err})") from err
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise TitleSourceError(f"{path}: not valid JSON ({err})") from err
        titles = list(data) if isinstance(data, (dict, list)) else None
        if titles is None or not all(isinstance(t, str) for t in titles):
            raise TitleSourceError(f"{path}: expected a JSON object keyed by title or a list of titles")
    else:  # '#' never starts a title (MediaWiki forbids it): such lines are comments
        titles = [line.strip().replace("_", " ") for line in text.splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    unique = sorted(set(titles))
    return pa.table({"title": unique, "views": pa.nulls(len(unique), pa.int64())}, schema=VIEWS_SCHEMA)


def select_titles(titles: pa.Table, min_views: int | None) -> tuple[pa.Table, dict[str, int]]:
    """Keep titles without ``:`` (namespaces such as ``Special:Search``; CLIP drops them), that
    the matcher can match, and (when ``views`` is known) with ``views >= min_views``.
    Returns (kept table, dropped counts by reason); ``rows == kept + sum(dropped)``."""
    dropped = {"colon": 0, "unmatchable": 0, "below_min_views": 0}
    keep: list[bool] = []
    views = titles["views"].to_pylist()
    for title, view in zip(titles["title"].to_pylist(), views):
        if ":" in title:
            dropped["colon"] += 1
            keep.append(False)
        elif not is_matchable(title):
            dropped["unmatchable"] += 1
            keep.append(False)
        elif view is not None and min_views is not None and view < min_views:
            dropped["below_min_views"] += 1
            keep.append(False)
        else:
            keep.append(True)
    return titles.filter(pa.array(keep, pa.bool_())), dropped


def titles_from_language_pageviews(paths: list[str], languages) -> tuple[dict[str, pa.Table], PageviewStats]:
    """Read every pageview file once and sum the views of each language's titles
    (``<code>`` + ``<code>.m`` domains): ({language: views table sorted by title}, stats)."""
    projects = wikipedia_projects(languages)
    stats = PageviewStats()
    tables: dict[str, list[pa.Table]] = {code: [] for code in languages}
    for path in paths:
        per_language, file_stats = read_language_pageviews(path, projects)
        for code, table in per_language.items():
            tables[code].append(table)
        stats.add(file_stats)
    return {code: sum_views(t) for code, t in tables.items()}, stats


def titles_from_pageviews(paths: list[str]) -> tuple[pa.Table, PageviewStats]:
    """Read and sum several pageview files (in the driver; engines may map :func:`read_pageview_file`)."""
    stats = PageviewStats()
    tables = []
    for path in paths:
        table, file_stats = read_pageview_file(path)
        tables.append(table)
        stats.add(file_stats)
    return sum_views(tables), stats


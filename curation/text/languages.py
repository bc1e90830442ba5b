"""Language codes of worldwide curation: fastText lid.176 labels → Wikipedia language codes.

The mapping is a reviewed data file shipped with the package, :data:`MAPPING_FILE`
(``lid_to_wiki.tsv``): its ``#`` header states the provenance of the labels (read from the model)
and of the Wikipedia codes, and every decision (``zh`` scripts, ``no``/``nn``, ``sh``,
macrolanguages, codes that differ from the wiki's: ``yue`` → ``zh-yue``, ``cbk`` → ``cbk-zam``).
Rows: ``lid_label``, ``wiki_code`` (empty: the label has no Wikipedia), ``note``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path

MAPPING_FILE = Path(__file__).with_name("lid_to_wiki.tsv")
COLUMNS = ("lid_label", "wiki_code", "note")
_LABEL = re.compile(r"[a-z]{2,3}")  # lid.176's labels: ISO 639-1/-3 style codes
_WIKI_CODE = re.compile(r"[a-z]{2,3}(-[a-z]+)*")  # a Wikipedia's subdomain: en, zh-yue, cbk-zam, be-tarask


def read_mapping(path: str | Path = MAPPING_FILE) -> dict[str, str]:
    """``{lid label: wiki code}`` of a mapping file (``""``: the label has no Wikipedia), checked:
    the header row is :data:`COLUMNS`, every row has three fields, labels are unique, codes are
    well formed, and a row that is not the identity (another code, or none) says why in its note.
    Raises ValueError naming the file and line."""
    mapping: dict[str, str] = {}
    header = None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            fields = tuple(line.split("\t"))
            where = f"{path}:{number}"
            if header is None:
                if fields != COLUMNS:
                    raise ValueError(f"{where}: header must be {'<tab>'.join(COLUMNS)}, not {line!r}")
                header = fields
                continue
            if len(fields) != len(COLUMNS):
                raise ValueError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)} ({line!r})")
            label, code, note = fields
            if not _LABEL.fullmatch(label):
                raise ValueError(f"{where}: malformed lid label {label!r}")
            if label in mapping:
                raise ValueError(f"{where}: lid label {label!r} listed twice")
            if code and not _WIKI_CODE.fullmatch(code):
                raise ValueError(f"{where}: malformed Wikipedia code {code!r}")
            if code != label and not note.strip():
                raise ValueError(f"{where}: {label} -> {code or '(no Wikipedia)'} is not the identity: "
                                 "its note must say why")
            mapping[label] = code
    if header is None:
        raise ValueError(f"{path}: no header row")
    return mapping


@functools.cache
def lid_to_wiki() -> dict[str, str]:
    """The shipped mapping (:data:`MAPPING_FILE`), read once per process. Do not mutate it."""
    return read_mapping(MAPPING_FILE)


def wiki_code(label: str) -> str | None:
    """The Wikipedia code of a lid.176 label (``"zh"``, ``"__label__yue"`` → ``"zh-yue"``), None
    when the label has no Wikipedia. A label the mapping does not know is a KeyError."""
    label = label.removeprefix("__label__")
    try:
        return lid_to_wiki()[label] or None
    except KeyError:
        raise KeyError(f"lid label {label!r} is not in {MAPPING_FILE}") from None


def wiki_languages() -> frozenset[str]:
    """The Wikipedia codes some lid.176 label maps to: the languages a worldwide run can keep."""
    return frozenset(code for code in lid_to_wiki().values() if code)


def check_languages(codes: Iterable[str]) -> None:
    """Raise ValueError for a code no lid.176 label maps to (the text stage could never keep a
    caption of it), with a hint when it is a label whose wiki code differs (``yue``: use ``zh-yue``)."""
    known = wiki_languages()
    unknown = [c for c in codes if c not in known]
    if not unknown:
        return
    mapping = lid_to_wiki()
    hints = [f"{c} -> {mapping[c]}" for c in unknown if mapping.get(c)]
    raise ValueError(f"languages {unknown}: no lid.176 label maps to these Wikipedia codes"
                     + (f" (use the wiki's code: {', '.join(hints)})" if hints else "")
                     + f"; the {len(known)} codes a caption can get are the wiki_code column of {MAPPING_FILE}")


def check_model_labels(labels: Iterable[str]) -> None:
    """Raise ValueError when a language ID model has labels the mapping does not cover (another
    model than lid.176 needs its own mapping rows before a worldwide run can use it)."""
    missing = sorted({lab.removeprefix("__label__") for lab in labels} - set(lid_to_wiki()))
    if missing:
        raise ValueError(f"the language ID model's labels {missing} are not in {MAPPING_FILE}")

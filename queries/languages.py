"""Languages of a worldwide (MetaCLIP 2) query list: which scripts are written without spaces,
how their text is cut into words, and what an entry of a language must be to ever match.

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Burmese, Khmer,
Tibetan) are matched by **raw substring**: an entry matches a caption that contains it anywhere,
nothing padded or spaced (:func:`is_no_space`). A segmenter is used only to *build* such a
language's entries (unigram and bigram counting over its text); every entry it yields is a run
of characters of that text, with no space added. Every other language is matched with MetaCLIP's
spaced rule (:mod:`queries.text`). The curation side asks :func:`is_no_space` which rule a
language's list gets.

Segmenters are libraries that ship their dictionaries or models in the wheel (they work
offline), loaded lazily the first time a language needs one:

=============================================  =======================================
languages (Wikipedia codes)                    segmenter
=============================================  =======================================
zh, zh-yue, yue, zh-classical, lzh, wuu, gan  jieba (its dictionary, HMM on)
ja                                             fugashi (MeCab) + unidic-lite
th                                             pythainlp ``newmm``
lo                                             laonlp (``newmm`` over its Lao dictionary)
km                                             khmer-nltk (its CRF model)
my, bo, dz                                     none offline: no counting from text
=============================================  =======================================

Burmese has no segmenter here (``pyidaungsu`` pulls a second fastText build), nor has Tibetan
(``botok`` downloads its dictionary at first use): their lists take entries only from sources that
need no segmentation (a frequency list, titles, a WordNet); counting their text is refused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import cache
from importlib import metadata

from queries.text import is_matchable

Segmenter = Callable[[str], list[str]]  # a whitespace-free chunk of text -> its words, in order

_CHINESE = ("zh", "zh-yue", "yue", "zh-classical", "lzh", "wuu", "gan")  # yue, lzh: aliases of zh-yue, zh-classical
# language -> the distribution that segments it (None: no offline segmenter)
SEGMENTER_PACKAGES: dict[str, str | None] = {
    **{code: "jieba" for code in _CHINESE},
    "ja": "fugashi",
    "th": "pythainlp",
    "lo": "laonlp",
    "km": "khmer-nltk",
    "my": None,
    "bo": None,
    "dz": None,
}
NO_SPACE_LANGUAGES: frozenset[str] = frozenset(SEGMENTER_PACKAGES)
LANGUAGE_CODE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")  # Wikipedia codes: en, zh-yue, simple, be-tarask
_NOT_IN_SUBSTRING_ENTRY = ("\t", "\n", "\r")


def is_no_space(language: str) -> bool:
    """Whether ``language`` (a Wikipedia code) is written without spaces between words, so its
    entries match captions as raw substrings (else: MetaCLIP's spaced rule, :mod:`queries.text`)."""
    return language in NO_SPACE_LANGUAGES


def matching_rule(language: str) -> str:
    """``"substring"`` for :func:`is_no_space` languages, ``"spaced"`` otherwise."""
    return "substring" if is_no_space(language) else "spaced"


def is_matchable_in(entry: str, language: str) -> bool:
    """Whether ``entry`` can ever match under ``language``'s rule: the spaced rule's
    :func:`queries.text.is_matchable`, or for a no-space language a non-empty entry with no
    edge whitespace and no tab/newline (a raw substring may hold any other character)."""
    if not is_no_space(language):
        return is_matchable(entry)
    return bool(entry) and entry == entry.strip() and not any(c in entry for c in _NOT_IN_SUBSTRING_ENTRY)


# codes that name a language but not its Wikipedia: the caption side gives captions the Wikipedia's
# code (curation/text/lid_to_wiki.tsv), so a list under the other code would never be matched
NOT_WIKIPEDIA_CODES = {"yue": "zh-yue", "lzh": "zh-classical", "cbk": "cbk-zam", "nb": "no"}


def check_language_code(code: str) -> str:
    """``code`` if it is shaped like a Wikipedia language code, else ValueError naming it (and
    the Wikipedia's own code for an alias such as ``yue``)."""
    if code in NOT_WIKIPEDIA_CODES:
        raise ValueError(f"{code!r} is not a Wikipedia's code: use {NOT_WIKIPEDIA_CODES[code]!r} "
                         "(captions get the Wikipedia's code from the language ID)")
    if not LANGUAGE_CODE.match(code):
        raise ValueError(f"{code!r} is not a Wikipedia language code (e.g. en, es, zh, zh-yue)")
    return code


def segmenter_name(language: str) -> str | None:
    """``package==version`` of ``language``'s segmenter; None for a spaced language or one without
    an offline segmenter."""
    package = SEGMENTER_PACKAGES.get(language)
    if package is None:
        return None
    return f"{package}=={metadata.version(package)}"


def _jieba() -> Segmenter:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()
    return lambda chunk: tokenizer.lcut(chunk, HMM=True)


def _fugashi() -> Segmenter:
    import fugashi
    import unidic_lite

    # name unidic-lite's dictionary explicitly: fugashi would prefer a full `unidic` install
    tagger = fugashi.Tagger(f'-r "{unidic_lite.DICDIR}/mecabrc" -d "{unidic_lite.DICDIR}"')
    return lambda chunk: [word.surface for word in tagger(chunk)]


def _pythainlp() -> Segmenter:
    from pythainlp.tokenize import word_tokenize

    return lambda chunk: word_tokenize(chunk, engine="newmm", keep_whitespace=False)


def _laonlp() -> Segmenter:
    from laonlp.tokenize import word_tokenize

    return word_tokenize


def _khmer() -> Segmenter:
    from khmernltk import word_tokenize

    logging.getLogger("khmer-nltk").setLevel(logging.WARNING)  # set up on import; it logs its model's path
    return word_tokenize


_LOADERS: dict[str, Callable[[], Segmenter]] = {
    "jieba": _jieba, "fugashi": _fugashi, "pythainlp": _pythainlp, "laonlp": _laonlp, "khmer-nltk": _khmer,
}


@cache
def segmenter(language: str) -> Segmenter | None:
    """``language``'s word segmenter (loaded once per process), None for a spaced language.
    Raises ValueError for a no-space language that has no offline segmenter."""
    if not is_no_space(language):
        return None
    package = SEGMENTER_PACKAGES[language]
    if package is None:
        raise ValueError(f"no offline word segmenter for {language!r} (written without spaces): its text "
                         f"cannot be counted; give it a frequency list (--unigram-counts), titles or a WordNet")
    return _LOADERS[package]()


def segment_text(text: str, segment: Segmenter) -> str:
    """``text`` with its words separated by one space and its own whitespace runs (and anything
    the segmenter skipped or rewrote) by two, so that counting the result under the spaced rule
    (:class:`queries.ngrams.NgramCounter`) counts each word and each pair of words that stand side
    by side in ``text``; a pair ``a b`` is the entry ``ab``, a raw substring of ``text``."""
    out: list[str] = []
    for chunk in text.split():
        words: list[str] = []
        pos = 0
        for word in segment(chunk):
            if not word:
                continue
            at = chunk.find(word, pos)
            if at < 0:  # rewritten by the segmenter: not a substring, not an entry
                continue
            if at > pos and words:  # characters skipped: the words on each side are not adjacent
                out.append(" ".join(words))
                words = []
            words.append(word)
            pos = at + len(word)
        if words:
            out.append(" ".join(words))
    return "  ".join(out)

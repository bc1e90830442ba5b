"""The worldwide tokenizer (``--tokenizer-kind unigram``): a cased SentencePiece-style unigram LM
trained on multilingual captions -- the sample data's real Spanish, French and English Wikipedia
lead paragraphs and real Thai strings (pythainlp's province list: a script without spaces)."""

from __future__ import annotations

import json
import os

import pytest

from pretrain.tokenizer import UNK, CaptionTokenizer


@pytest.fixture(scope="module")
def captions(sample):
    out = []
    for key in ("wiki_summaries_en", "wiki_summaries_es", "wiki_summaries_fr"):
        with open(sample[key], encoding="utf-8") as f:
            pages = json.load(f)
        out += [page["extract"] for page in pages.values() if page.get("extract")][:150]
    import pythainlp

    provinces = os.path.join(os.path.dirname(pythainlp.__file__), "corpus", "thailand_provinces_th.csv")
    with open(provinces, encoding="utf-8") as f:
        thai = [line.split(",")[0] for line in f if line.strip()]
    out += [f"จังหวัด{name}" for name in thai] * 3  # "province of <name>": no spaces between the words
    return out


def test_unigram_tokenizer_is_cased_segments_scripts_without_spaces_and_round_trips(captions):
    tok = CaptionTokenizer.train(captions, vocab_size=2000, kind="unigram", context_length=64)
    assert [tok.tokenizer.token_to_id(t) for t in ("<pad>", "<start_of_text>", "<end_of_text>", UNK)] == [0, 1, 2, 3]
    assert tok.vocab_size <= 2000
    thai = "จังหวัดเชียงใหม่"
    pieces = tok.tokenizer.encode(thai).tokens
    assert len(pieces) > 1 and "จังหวัด" in "".join(pieces)  # split by the model, not one token per caption
    for caption in (thai, "El río más largo de España", "La Tour Eiffel à Paris"):
        ids = tok([caption])[0]
        assert ids[0] == tok.sot_id and 3 not in ids.tolist()  # no <unk> on scripts seen in training
        assert tok.decode(ids) == caption  # cased, accents and Thai preserved
    assert tok.tokenizer.encode("Paris").ids != tok.tokenizer.encode("paris").ids
    # saved and loaded as the pretraining run saves it
    again = CaptionTokenizer.from_str(tok.to_str(), 64)
    assert again([thai]).tolist() == tok([thai]).tolist()


def test_the_english_bpe_is_unchanged_and_a_wrong_kind_is_refused(captions):
    bpe = CaptionTokenizer.train(captions[:100], vocab_size=600)
    assert bpe.tokenizer.encode("Paris").ids == bpe.tokenizer.encode("paris").ids  # lower-cased, as before
    with pytest.raises(ValueError, match="bpe' or 'unigram"):
        CaptionTokenizer.train(captions[:10], vocab_size=600, kind="wordpiece")


def test_a_small_vocabulary_covers_the_common_characters_and_leaves_the_rare_unknown(captions):
    """More distinct characters than a tiny vocabulary holds (SentencePiece's character coverage):
    training succeeds, common characters are pieces, a character seen once maps to <unk>."""
    rare = "\u9f98"  # a single, rare CJK character (龘)
    tok = CaptionTokenizer.train([*captions, f"很少見的字{rare}"], vocab_size=120, kind="unigram", context_length=32)
    assert tok.vocab_size <= 120
    ids = tok([f"la {rare}"])[0].tolist()
    assert 3 in ids  # <unk>
    assert 3 not in tok(["la"])[0].tolist()

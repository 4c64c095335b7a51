"""Tokenizers that fit the script (nmt/data/tokenizer.py): character_coverage auto on the
real gettext corpora (../shared/data/gettext), and SentencePiece's nmt_nfkc
normalization of full-width and half-width forms."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from nmt.core.errors import TokenizerError
from nmt.core.tokens import UNK_ID
from nmt.data.corpus import read_lines
from nmt.data.tokenizer import TokenizerConfig, auto_coverage, train_sentencepiece

SMALL = {"vocab_size": 2500, "input_sentence_size": 0, "seed": 1}  # above a large alphabet's


@pytest.fixture
def gettext(shared_data) -> Path:
    path = shared_data / "gettext"
    if not (path / "en-zh").is_dir():
        pytest.skip(f"no gettext corpora under {shared_data}")
    return path


def sample(gettext: Path, pair: str, lang: str, n: int = 3000) -> list[str]:
    return list(itertools.islice(read_lines(gettext / pair / f"train.{lang}.gz"), n))


@pytest.mark.parametrize(("pair", "lang", "coverage"), [
    ("en-zh", "zh", 0.9995), ("en-ja", "ja", 0.9995), ("en-ko", "ko", 0.9995),
    ("en-zh", "en", 1.0), ("en-de", "de", 1.0)])
def test_auto_coverage_fits_each_side_s_script(gettext, pair, lang, coverage):
    tok = train_sentencepiece(sample(gettext, pair, lang), TokenizerConfig(**SMALL))
    assert tok.character_coverage == coverage


def test_a_joint_tokenizer_with_a_chinese_side_takes_the_large_alphabet_s_value(gettext):
    both = sample(gettext, "en-zh", "en") + sample(gettext, "en-zh", "zh")
    assert auto_coverage(both) == 0.9995
    assert auto_coverage(sample(gettext, "en-de", "en") + sample(gettext, "en-de", "de")) == 1.0
    assert auto_coverage([]) == 1.0


def test_a_set_coverage_is_kept_and_a_bad_one_refused(gettext):
    tok = train_sentencepiece(sample(gettext, "en-zh", "zh"),
                              TokenizerConfig(**SMALL, character_coverage=1.0))
    assert tok.character_coverage == 1.0
    for bad in ("most", 0, 1.5, True):
        with pytest.raises(Exception, match="character_coverage must be auto or in"):
            TokenizerConfig(character_coverage=bad)


def test_too_small_a_vocabulary_for_a_large_alphabet_says_so(gettext):
    with pytest.raises(TokenizerError, match=r"vocab_size=300 is too small for the \d+ "
                                             r"characters .* at character_coverage=0\.9995"):
        train_sentencepiece(sample(gettext, "en-zh", "zh"),
                            TokenizerConfig(**{**SMALL, "vocab_size": 300}))


def test_full_and_half_width_forms_are_normalized_as_nmt_nfkc_does(gettext):
    zh = sample(gettext, "en-zh", "zh")
    ja = sample(gettext, "en-ja", "ja")
    tok = train_sentencepiece([*zh, *ja, "ABC 123 カタカナ"] * 2, TokenizerConfig(**SMALL))
    assert tok.encode(["ＡＢＣ　１２３"]) == tok.encode(["ABC 123"])  # full-width Latin, space
    assert tok.encode(["ｶﾀｶﾅ"]) == tok.encode(["カタカナ"])  # half-width katakana
    # The rare characters 0.9995 leaves out become unknown pieces, and only those.
    ids = [i for seq in tok.encode(zh) for i in seq]
    assert 0 < ids.count(UNK_ID) / len(ids) < 0.01

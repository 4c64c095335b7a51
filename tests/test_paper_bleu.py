"""bench/paper_bleu.py: sacreBLEU beside the papers' lowercased BLEU on Moses tokens."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from train_helpers import load_bench

paper_bleu = load_bench("paper_bleu")

REFS = ["Ein Mann fährt ein rotes Auto.", "Zwei Kinder spielen im Park-Bereich.",
        "Eine Frau liest ein Buch, das sie mag."]
HYPS = ["ein Mann fährt ein rotes Auto.", "Zwei Kinder spielen im Park-Bereich.",
        "Eine Frau liest ein Buch, sie mag."]


def test_scores_on_both_scales(tmp_path, capsys):
    (tmp_path / "hyp").write_text("\n".join(HYPS) + "\n")
    (tmp_path / "ref").write_text("\n".join(REFS) + "\n")
    result = paper_bleu.main([str(tmp_path / "hyp"), str(tmp_path / "ref")])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["lines"] == 3
    assert result["bleu"] == round(sacrebleu.corpus_bleu(HYPS, [REFS]).score, 2)
    assert result["bleu_lc"] > result["bleu"]  # "ein" matches "Ein" only lowercased
    # Moses and 13a split these lines alike, so the two lowercased scores agree; -a also
    # splits "Park-Bereich" (one more matching n-gram run): a higher score.
    assert result["bleu_tok_lc"] == result["bleu_lc"]
    assert result["bleu_tok_lc_a"] > result["bleu_tok_lc"]


def test_tokenized_lowercased():
    assert paper_bleu.tokenized_lowercased(["Ein Park-Bereich, gut."], "de", False) == [
        "ein park-bereich , gut ."]
    assert paper_bleu.tokenized_lowercased(["Ein Park-Bereich."], "de", True) == [
        "ein park @-@ bereich ."]


def test_line_counts_must_match():
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        paper_bleu.scores(HYPS[:2], REFS, "de")

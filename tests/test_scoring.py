"""Scores that fit the target language (nmt/core/metrics.py): sacreBLEU told the target
language picks BLEU's tokenizer (zh, ja-mecab, ko-mecab, 13a), the same number as its own
command line gives; validation, the checkpoint and evaluate.py carry the language."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import files_config
from sacrebleu.tokenizers import tokenizer_ja_mecab
from train_helpers import compose_train, toy_overrides

from nmt.core.errors import ConfigError
from nmt.core.languages import check_tag, primary
from nmt.core.metrics import Scoring

# A sentence and its reference, one word apart, per language (hypothesis, reference).
PAIRS = {
    "zh": ("今天天气很好，我们去公园散步吧。", "今天天气很好，我们去海边散步吧。"),
    "ja": ("今日は天気がとても良いので公園に行きます。",
           "今日は天気がとても良いので海に行きます。"),
    "ko": ("오늘은 날씨가 아주 좋아서 공원에 갑니다.", "오늘은 날씨가 아주 좋아서 바다에 갑니다."),
    "de": ("Heute ist das Wetter schön, wir gehen in den Park.",
           "Heute ist das Wetter schön, wir gehen an den Strand."),
}
TOKENIZER = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab", "de": "13a"}


def test_identical_chinese_scores_100_with_the_chinese_tokenizer():
    text = ["我们今天去公园散步吧。", "这个文件不存在。"]
    scores = Scoring("zh-Hans").scores(text, text)
    assert scores["bleu"] == 100.0 and "tok:zh" in str(scores["bleu_signature"])
    # 13a keeps the unspaced sentence one "word": the same line pair is no match at all.
    hyp, ref = PAIRS["zh"]
    assert Scoring("zh").scores([hyp], [ref])["bleu"] > 50
    assert Scoring("en").scores([hyp], [ref])["bleu"] == 0.0


@pytest.mark.parametrize("lang", sorted(PAIRS))
def test_a_pair_scores_what_sacrebleu_s_command_line_gives(lang, tmp_path):
    hyp, ref = PAIRS[lang]
    (tmp_path / "hyp").write_text(hyp + "\n", encoding="utf-8")
    (tmp_path / "ref").write_text(ref + "\n", encoding="utf-8")
    cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(tmp_path / "ref"), "-i",
                          str(tmp_path / "hyp"), "-l", f"en-{lang}", "-m", "bleu", "-b", "-w",
                          "4"], capture_output=True, text=True, check=True)
    scores = Scoring(lang).scores([hyp], [ref])
    assert scores["bleu"] == pytest.approx(float(cli.stdout), abs=1e-4)
    assert 0 < scores["bleu"] < 100
    assert f"tok:{TOKENIZER[lang]}" in str(scores["bleu_signature"])
    assert f"tok:{TOKENIZER[lang]}" in str(scores["bleu_lc_signature"])  # lowercased: the same
    asian = "yes" if lang != "de" else "no"
    assert f"asian:{asian}" in str(scores["ter_signature"])


def test_a_missing_extra_stops_with_one_line_naming_it(monkeypatch):
    def no_mecab(*args, **kwargs):
        raise RuntimeError("Japanese tokenization requires extra dependencies")

    monkeypatch.setattr(tokenizer_ja_mecab.TokenizerJaMecab, "__init__", no_mecab)
    with pytest.raises(ConfigError, match=r'BLEU into Japanese .* pip install -e "\.\[ja\]"'):
        Scoring("ja-JP").signatures()
    # Told another tokenizer, it needs none.
    assert "tok:char" in Scoring("ja", "char").signatures()["bleu_signature"]


def test_the_tokenizer_can_be_chosen_and_a_wrong_one_is_named():
    assert "tok:intl" in Scoring("de", "intl").signatures(("bleu",))["bleu_signature"]
    with pytest.raises(ConfigError, match=r"metrics\.bleu_tokenize: sacrebleu has no "
                                          r"tokenizer 'zhh'; it has none, zh, 13a"):
        Scoring("zh", "zhh").signatures()


@pytest.mark.parametrize("tag", ["en", "zh-Hans", "zh_CN", "pt-BR", "sr-Latn-RS", "es-419"])
def test_bcp47_tags_are_accepted(tag):
    assert check_tag(tag, "data.tgt_lang") == tag
    assert primary(tag) == tag[:2].lower()


@pytest.mark.parametrize("tag", ["", "german", "zh--CN", "en-", 3])
def test_other_language_values_are_refused(tag):
    with pytest.raises(ConfigError, match=r"data\.tgt_lang must be a BCP-47 language tag"):
        check_tag(tag, "data.tgt_lang")


def test_validation_and_evaluation_score_into_the_data_s_target_language(toy_dir, tmp_path):
    """A run into zh (the toy's German text, labelled Chinese): validation's and the test's
    signatures say tok:zh, the checkpoint records the languages, and evaluate.py scores
    its own files into them with no data given."""
    from nmt.training.train import train

    run = tmp_path / "run"
    train(compose_train([*toy_overrides(files_config(toy_dir, tmp_path / "cache"), run),
                         "data.tgt_lang=zh", "trainer.max_steps=6"]))
    summary = json.loads((run / "metrics.json").read_text())
    assert "tok:zh" in summary["test/bleu_signature"]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["languages"] == {"src": "en", "tgt": "zh"}
    out = tmp_path / "eval"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "evaluate.py"),
                    f"checkpoint={run / 'checkpoints' / 'last.ckpt'}",
                    f"src={toy_dir / 'test.en'}", f"ref={toy_dir / 'test.de'}",
                    f"output_dir={out}", "progress=false", "decoding.beam_size=1"],
                   check=True, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text())
    assert "tok:zh" in report[0]["bleu_signature"] and "asian:yes" in report[0]["ter_signature"]

"""Caption scores: tokenisation, several references per image, the one-image CIDEr guard;
and Xu et al.'s doubly stochastic attention penalty."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from nmt.core.metrics import CAPTION_METRICS, caption_scores, caption_tokens
from nmt.core.tokens import PAD_ID
from nmt.training.loss import attention_coverage_penalty

REFS = [["a large red circle to the left of a small blue square",
         "a small blue square to the right of a large red circle"],
        ["there is a small green triangle", "a small green triangle", "a single small green "
         "triangle"],
        ["a white square above a yellow circle", "a yellow circle below a white square"]]


def test_tokens_are_lowercased_without_punctuation_with_clitics_split():
    assert caption_tokens("A dog's ball, don't RUN!  Über-fast.") == [
        "a", "dog", "'s", "ball", "do", "n't", "run", "über", "fast"]
    assert caption_tokens(" ... ") == []


def test_a_hypothesis_equal_to_any_reference_scores_full_bleu():
    hyps = [REFS[0][1], REFS[1][0], REFS[2][0]]  # a different reference of each image
    scores = caption_scores(hyps, REFS)
    assert list(scores) == list(CAPTION_METRICS)
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge_l"):
        assert scores[name] == pytest.approx(100.0)
    assert scores["bleu"] == scores["bleu4"]
    assert scores["cider"] > 100  # CIDEr-D of exact matches is well above 1 (x100)


def test_punctuation_and_case_do_not_change_the_scores():
    hyps = [REFS[0][0], REFS[1][1], REFS[2][1]]
    shouted = [h.upper().replace(" a ", " a, ") + "." for h in hyps]
    assert caption_scores(shouted, REFS) == caption_scores(hyps, REFS)


def test_wrong_words_lower_every_score():
    good = caption_scores([REFS[0][0], REFS[1][0], REFS[2][0]], REFS)
    bad = caption_scores(["a large green circle to the left of a small red square",
                          "there is a small blue circle", "a white square above a circle"], REFS)
    for name in CAPTION_METRICS:
        assert bad[name] < good[name], name


def test_more_references_can_only_help():
    hyp = ["a small blue square to the right of a large red circle"]
    one = caption_scores(hyp * 2, [[REFS[0][0]], [REFS[0][0]]])
    two = caption_scores(hyp * 2, [REFS[0], REFS[0]])
    assert two["bleu4"] == pytest.approx(100.0) and one["bleu4"] < 60


def test_one_image_leaves_cider_out_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        scores = caption_scores([REFS[1][0]], [REFS[1]])
    assert "cider" not in scores and scores["rouge_l"] == pytest.approx(100.0)
    assert "at least two images" in caplog.text


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="2 hypotheses but 1 images"):
        caption_scores(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        caption_scores(["a", "b"], [["a"], []])


def test_coverage_penalty_by_hand():
    # Two steps and a padded one over three regions: coverage (0.5+0.25, 0.5+0.25, 0+0.5).
    attn = torch.tensor([[[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.0, 0.0, 1.0]]])
    target = torch.tensor([[5, 6, PAD_ID]])
    expected = (1 - 0.75) ** 2 * 2 + (1 - 0.5) ** 2
    assert attention_coverage_penalty(attn, target).item() == pytest.approx(expected)
    # Attending every region exactly once over the caption costs nothing.
    eye = torch.eye(3).unsqueeze(0)
    assert attention_coverage_penalty(eye, torch.tensor([[4, 5, 6]])).item() == 0.0
    assert math.isclose(attention_coverage_penalty(eye.repeat(2, 1, 1),
                                                   torch.tensor([[4, 5, PAD_ID]] * 2)).item(), 2)

"""A short fixed reference translation: a seeded model must keep decoding to exactly these
tokens and scores. Any change to the model, the search or the decoding options that moves
an output shows here first (the property tests in test_search.py say what is right; this
says what has not changed). The weights are scaled so that every greedy choice wins by a
margin (0.08 in log-probability at least) far above float noise across CPUs."""

from __future__ import annotations

import pytest
import torch

from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.options import Decoding
from nmt.model import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = torch.tensor([[5, 9, 12, 7, 3, 0], [20, 4, 3, 0, 0, 0], [11, 13, 17, 19, 23, 3]])
LENGTHS = torch.tensor([5, 3, 6])

GREEDY = [
    ([14, 14, 14, 10, 10, 10, 10, 10, 10, 10, 14, 14, 14, 14, 14, 14], -20.4652),
    ([14, 14, 14, 28, 28, 14, 27, 14, 14, 10, 28, 28, 14], -20.1852),
    ([23, 4, 10, 10, 10, 10, 10, 13, 4, 4, 4, 10, 10, 10, 10, 10, 10, 10], -12.5879),
]
BEAM3_NBEST2 = [
    [([14, 14, 14, 10, 10, 10, 10, 10, 10, 14, 14, 14, 14, 14, 14, 14], -9.0323),
     ([14, 14, 14, 10, 10, 10, 10, 10, 10, 10, 14, 14, 14, 14, 14, 14], -9.3854)],
    [([27, 23, 28, 28, 14, 27, 27, 27, 27, 27, 27, 27, 27], -6.3582),
     ([27, 23, 28, 28, 14, 27, 27, 27, 27, 27, 14, 27, 27], -7.2342)],
    [([23, 4, 10, 10, 10, 10, 10, 13, 4, 4, 4, 10, 10, 10, 10, 10, 10, 10], -5.4792),
     ([23, 4, 10, 10, 10, 10, 10, 13, 4, 4, 4, 10, 13, 4, 13, 4, 13, 4], -6.4614)],
]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1234)
    model = build_model({"emb_size": 16, "encoder_hidden": 16, "decoder_hidden": 24,
                         "dropout": 0.0}, 30, 30).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model


def outputs(model, decoding: Decoding) -> list[list[tuple[list[int], float]]]:
    found = decode(model, SourceBatch(SRC, LENGTHS), decoding)
    return [[(h.tokens, round(h.score, 4)) for h in hyps] for hyps in found]


def test_greedy_reference(model):
    assert outputs(model, Decoding(beam_size=1)) == [[hyp] for hyp in GREEDY]


def test_beam_reference(model):
    assert outputs(model, Decoding(beam_size=3, n_best=2)) == BEAM3_NBEST2

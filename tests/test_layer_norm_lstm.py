"""The layer-normalized LSTM (model.cell=ln_lstm): its step is Ba et al.'s formula, packed
batches give each sentence's own result, and the model runs on it as on nn.LSTM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.core.errors import ConfigError
from nmt.model import build_model
from nmt.model.layer_norm import LayerNormLSTM
from nmt.model.probe import stepped_encoder

pytestmark = pytest.mark.usefixtures("one_thread")
V = 23
SMALL = {"cell": "ln_lstm", "emb_size": 8, "encoder_hidden": 6, "decoder_hidden": 12,
         "dropout": 0.0}


def test_one_step_is_the_formula():
    torch.manual_seed(0)
    lstm = LayerNormLSTM(5, 4)
    with torch.no_grad():  # gains and shifts away from 1 and 0, so that each one counts
        for name, param in lstm.named_parameters():
            if name.startswith("ln_"):
                param.uniform_(0.5, 1.5)
    x, h, c = torch.randn(3, 1, 5), torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    out, (h1, c1) = lstm(x, (h, c))

    def norm(v, gain, shift=None):
        v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(v.var(-1, unbiased=False,
                                                               keepdim=True) + 1e-5)
        return v * gain + (0 if shift is None else shift)

    gates = (norm(x[:, 0] @ lstm.weight_ih_l0.T, lstm.ln_ih_l0.weight) + lstm.bias_ih_l0
             + norm(h[0] @ lstm.weight_hh_l0.T, lstm.ln_hh_l0.weight))
    i, f, g, o = gates.chunk(4, 1)
    c_want = torch.sigmoid(f) * c[0] + torch.sigmoid(i) * torch.tanh(g)
    h_want = torch.sigmoid(o) * torch.tanh(norm(c_want, lstm.ln_c_l0.weight, lstm.ln_c_l0.bias))
    torch.testing.assert_close(c1[0], c_want)
    torch.testing.assert_close(h1[0], h_want)
    torch.testing.assert_close(out[:, 0], h_want)


def test_packed_batch_gives_each_sequence_its_own_result():
    torch.manual_seed(1)
    lstm = LayerNormLSTM(5, 4, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(3, 6, 5), torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h, c) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True)
    assert out.shape == (3, 6, 8) and h.shape == c.shape == (4, 3, 4)
    for b, n in enumerate(lengths.tolist()):
        alone, (h_alone, c_alone) = lstm(x[b:b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone[0])
        torch.testing.assert_close(h[:, b], h_alone[:, 0])
        torch.testing.assert_close(c[:, b], c_alone[:, 0])
        assert not out[b, n:].any()  # padding stays zero


@pytest.mark.parametrize("input_feeding", [True, False])
def test_model_steps_reproduce_teacher_forcing(input_feeding):
    torch.manual_seed(2)
    model = build_model({**SMALL, "input_feeding": input_feeding, "decoder_layers": 2},
                        V, V).eval()
    lengths = torch.tensor([7, 4, 1, 5])
    src = torch.randint(4, V, (4, 7))
    src[torch.arange(7).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    tgt = torch.randint(4, V, (4, 6))
    with torch.no_grad():
        ref = model(src, lengths, tgt)
        enc = model.encode(src, lengths)
        state = model.init_state(enc)
        steps = []
        for t in range(tgt.size(1)):
            logits, state, _ = model.step(tgt[:, t], state, enc)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), ref, atol=1e-5, rtol=1e-5)


def test_model_learns_and_every_gain_gets_a_gradient():
    torch.manual_seed(3)
    model = build_model({**SMALL, "forget_bias": 1.0}, V, V)
    assert (model.decoder.rnn.bias_ih_l0[12:24] == 1).all()
    src = torch.randint(4, V, (8, 5))
    tgt = torch.randint(4, V, (8, 6))
    lengths = torch.full((8,), 5)
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(src, lengths, tgt[:, :-1]).reshape(-1, V),
                               tgt[:, 1:].reshape(-1))
        optim.zero_grad()
        loss.backward()
        if not losses:
            names = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
            assert not names
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_the_gradient_probe_says_it_needs_a_kernel():
    model = build_model(SMALL, V, V)
    with pytest.raises(ConfigError, match="cell 'ln_lstm' has no one-step kernel"):
        stepped_encoder(model.encoder, torch.randint(4, V, (2, 3)), torch.tensor([3, 2]))

"""The network: shapes, masking, every option, fast path == step loop, overfitting."""

from __future__ import annotations

import itertools

import pytest
import torch

from nmt.model import Seq2Seq
from nmt.model.attention import ATTENTION_CHOICES, build_attention
from nmt.model.encoder import sequence_mask
from nmt.module import label_smoothed_nll

V = 23
SMALL = {"emb_size": 8, "encoder_hidden": 6, "decoder_hidden": 12, "dropout": 0.0}


def toy_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 4, 1, 5])
    src = torch.randint(4, V, (4, 7), generator=g)
    src[sequence_mask(lengths, 7).logical_not()] = 0
    tgt = torch.randint(4, V, (4, 6), generator=g)
    return src, lengths, tgt


def make(**kwargs) -> Seq2Seq:
    torch.manual_seed(0)
    return Seq2Seq(V, V, **{**SMALL, **kwargs})


def test_shapes():
    model = make(decoder_layers=2, encoder_layers=2)
    src, lengths, tgt = toy_batch()
    logits, attn = model.forward_with_attention(src, lengths, tgt)
    assert logits.shape == (4, 6, V) and attn.shape == (4, 6, 7)
    enc = model.encode(src, lengths)
    assert enc.memory.shape == (4, 7, 12) and enc.mask.shape == (4, 7)
    assert enc.keys.shape == (4, 7, 12)
    state = model.init_state(enc)
    assert state.hidden[0].shape == (2, 4, 12) and state.feed.shape == (4, 12)
    step_logits, state, step_attn = model.step(tgt[:, 0], state, enc)
    assert step_logits.shape == (4, V) and step_attn.shape == (4, 7)


def test_attention_weights_are_masked_and_normalized():
    model = make()
    src, lengths, tgt = toy_batch()
    _, attn = model.forward_with_attention(src, lengths, tgt)
    mask = sequence_mask(lengths, 7)
    assert torch.all(attn.masked_select(~mask.unsqueeze(1).expand_as(attn)) == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 6))


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
@pytest.mark.parametrize("input_feeding", [True, False])
def test_padding_changes_nothing(attention, input_feeding):
    size = {"decoder_hidden": 12} if attention != "luong_dot" else {}
    model = make(attention=attention, input_feeding=input_feeding, **size).eval()
    src, lengths, tgt = toy_batch()
    garbage = src.clone()
    pad = ~sequence_mask(lengths, 7)
    garbage[pad] = torch.randint(4, V, (int(pad.sum()),))
    longer = torch.cat([src, torch.full((4, 3), 9)], dim=1)  # more padded columns
    with torch.no_grad():
        ref = model(src, lengths, tgt)
        torch.testing.assert_close(model(garbage, lengths, tgt), ref)
        torch.testing.assert_close(model(longer, lengths, tgt), ref)
        single = model(src[1:2, :4], lengths[1:2], tgt[1:2])  # alone and unpadded
    torch.testing.assert_close(single, ref[1:2], atol=1e-5, rtol=1e-5)


OPTIONS = list(itertools.product(["rnn", "gru", "lstm"], ATTENTION_CHOICES, [True, False]))


@pytest.mark.parametrize(("cell", "attention", "input_feeding"), OPTIONS)
def test_every_option_runs_forward_and_backward(cell, attention, input_feeding):
    # Vary the remaining options along the grid so each value appears with several others.
    i = OPTIONS.index((cell, attention, input_feeding))
    kwargs = {
        "bidirectional": i % 2 == 0, "bridge": ("linear", "zeros")[i % 3 == 0],
        "encoder_layers": 1 + i % 2, "decoder_layers": 1 + (i // 2) % 2,
        "tie_embeddings": i % 4 != 1, "tie_src_tgt": i % 5 == 0, "dropout": 0.1,
    }
    if attention == "luong_dot":  # needs decoder size == encoder output size
        kwargs["decoder_hidden"] = 12 if kwargs["bidirectional"] else 6
    if attention == "none":  # without attention only the bridge carries the source
        kwargs["bridge"] = "linear"
    model = make(cell=cell, attention=attention, input_feeding=input_feeding, **kwargs)
    src, lengths, tgt = toy_batch(i)
    loss, _, n = label_smoothed_nll(model(src, lengths, tgt), tgt, 0.1)
    (loss / n).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.rnn.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
def test_fast_path_equals_step_loop(cell, attention):
    size = {"decoder_hidden": 12} if attention == "luong_dot" else {}
    model = make(cell=cell, attention=attention, input_feeding=False, decoder_layers=2,
                 **size).eval()
    src, lengths, tgt = toy_batch()
    with torch.no_grad():
        fast = model(src, lengths, tgt)
        enc = model.encode(src, lengths)
        # The same decoder as a step-by-step loop (what input feeding forces).
        emb = model.tgt_embed(tgt)
        state = model.init_state(enc)
        outs = []
        for t in range(tgt.size(1)):
            o, state, _ = model.decoder.step(emb[:, t], state, enc.keys, enc.memory, enc.mask)
            outs.append(o)
        loop = model.logits(torch.stack(outs, 1))
    torch.testing.assert_close(fast, loop, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_step_reproduces_teacher_forcing(input_feeding):
    model = make(input_feeding=input_feeding).eval()
    src, lengths, tgt = toy_batch()
    with torch.no_grad():
        ref = model(src, lengths, tgt)
        enc = model.encode(src, lengths)
        state = model.init_state(enc)
        steps = []
        for t in range(tgt.size(1)):
            logits, state, _ = model.step(tgt[:, t], state, enc)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), ref, atol=1e-5, rtol=1e-5)


def test_reorder_selects_rows():
    model = make().eval()
    src, lengths, _ = toy_batch()
    enc = model.encode(src, lengths)
    index = torch.tensor([2, 2, 0])
    picked = model.reorder_encoder(enc, index)
    torch.testing.assert_close(picked.memory, enc.memory[index])
    state = model.reorder_state(model.init_state(enc), index)
    torch.testing.assert_close(state.hidden[0], model.init_state(enc).hidden[0][:, index])


def test_tied_embeddings_share_one_tensor():
    model = make(tie_embeddings=True, tie_src_tgt=True)
    assert model.generator.weight is model.tgt_embed.weight is model.src_embed.weight
    assert model.pre_output is not None  # decoder 12 -> embedding 8 before the tied layer
    untied = make(tie_embeddings=False)
    assert untied.generator.weight is not untied.tgt_embed.weight
    assert untied.src_embed is not untied.tgt_embed


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cell": "transformer"}, "unknown cell 'transformer'; valid choices: rnn, gru, lstm"),
    ({"attention": "magic"}, "unknown attention 'magic'; valid choices: bahdanau, luong_dot"),
    ({"bridge": "mlp"}, "unknown bridge 'mlp'; valid choices: linear, zeros"),
    ({"emb_size": 0}, "emb_size must be a positive integer, got 0"),
    ({"decoder_hidden": -3}, "decoder_hidden must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"attention": "luong_dot", "decoder_hidden": 7}, "luong_dot attention needs decoder_hidden"),
    ({"attention": "none", "bridge": "zeros"}, "the decoder would never see the source"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_tie_src_tgt_needs_joint_vocabulary():
    with pytest.raises(ValueError, match="tie_src_tgt needs one joint vocabulary"):
        Seq2Seq(10, 12, tie_src_tgt=True)


def test_build_attention_unknown_name():
    with pytest.raises(ValueError, match="valid choices: bahdanau, luong_dot, luong_general"):
        build_attention("cosine", 4, 4, 4)
    assert build_attention("none", 4, 4, 4) is None


def test_tiny_model_overfits():
    torch.manual_seed(0)
    model = Seq2Seq(V, V, emb_size=32, encoder_hidden=32, decoder_hidden=32, dropout=0.0)
    src, lengths, tgt = toy_batch(3)
    tgt_in = torch.cat([torch.full((4, 1), 2), tgt[:, :-1]], dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss, nll, n = label_smoothed_nll(model(src, lengths, tgt_in), tgt, 0.0)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    assert float(nll / n) < 0.05

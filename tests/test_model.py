"""The network: shapes, masking, every option, fast path == step loop, overfitting."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from nmt.data.dataset import collate
from nmt.model import Seq2Seq, build_model
from nmt.model.attention import ATTENTIONS, attention_choices, build_attention
from nmt.model.encoder import sequence_mask
from nmt.training.module import label_smoothed_nll

V = 23
CELLS = ("rnn", "gru", "lstm")
SMALL = {"emb_size": 8, "encoder_hidden": 6, "decoder_hidden": 12, "dropout": 0.0}
ATTENTION_CHOICES = attention_choices()
# Every attention without and with the attention gate (which needs a context to gate).
GATES = [(a, g) for a in ATTENTION_CHOICES for g in (False, True) if a != "none" or not g]


pytestmark = pytest.mark.usefixtures("one_thread")


def toy_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([7, 4, 1, 5])
    src = torch.randint(4, V, (4, 7), generator=g)
    src[sequence_mask(lengths, 7).logical_not()] = 0
    tgt = torch.randint(4, V, (4, 6), generator=g)
    return src, lengths, tgt


def make(pad_id: int = 0, **kwargs) -> Seq2Seq:
    torch.manual_seed(0)
    return build_model({**SMALL, **kwargs}, V, V, pad_id)


def state_tensors(state) -> list[torch.Tensor]:
    hidden = list(state.hidden) if isinstance(state.hidden, tuple) else [state.hidden]
    return hidden + ([state.feed] if state.feed is not None else [])


def test_shapes():
    model = make(decoder_layers=2, encoder_layers=2)
    src, lengths, tgt = toy_batch()
    logits, attn = model.forward_with_attention(src, lengths, tgt)
    assert logits.shape == (4, 6, V) and attn.shape == (4, 6, 7)
    assert model(src, lengths, tgt).shape == (4, 6, V)
    enc = model.encode(src, lengths)
    assert enc.memory.shape == (4, 7, 12) and enc.mask.shape == (4, 7)
    assert enc.mask.dtype == torch.bool and enc.keys.shape == (4, 7, 12)
    assert enc.final[0].shape == enc.final[1].shape == (4, 12)  # top layer, both directions
    state = model.init_state(enc)
    assert state.hidden[0].shape == state.hidden[1].shape == (2, 4, 12)
    assert state.feed.shape == (4, 12)
    step_logits, state, step_attn = model.step(tgt[:, 0], state, enc)
    assert step_logits.shape == (4, V) and step_attn.shape == (4, 7)
    assert state.hidden[0].shape == (2, 4, 12) and state.feed.shape == (4, 12)


@pytest.mark.parametrize(("attention", "keys_shape"), [
    ("bahdanau", (4, 7, 10)), ("luong_concat", (4, 7, 10)), ("luong_general", (4, 7, 12)),
    ("luong_dot", (4, 7, 12)), ("none", (4, 7, 12))])
def test_keys_are_projected_once_per_batch(attention, keys_shape):
    model = make(attention=attention, attention_size=10)
    enc = model.encode(*toy_batch()[:2])
    assert enc.keys.shape == keys_shape
    if attention in ("luong_dot", "none"):
        assert enc.keys is enc.memory


def test_attention_weights_are_masked_and_normalized():
    model = make()
    src, lengths, tgt = toy_batch()
    _, attn = model.forward_with_attention(src, lengths, tgt)
    mask = sequence_mask(lengths, 7)
    assert torch.all(attn.masked_select(~mask.unsqueeze(1).expand_as(attn)) == 0)
    torch.testing.assert_close(attn.sum(-1), torch.ones(4, 6))


@pytest.mark.parametrize("name", list(ATTENTIONS))
def test_attention_ignores_padded_memory(name):
    torch.manual_seed(0)
    attention = build_attention(name, 6, 6, 5)
    mask = sequence_mask(torch.tensor([5, 2, 3]), 5)  # (B, S)
    memory = torch.randn(3, 5, 6)
    garbage = torch.where(mask.unsqueeze(-1), memory, 100 * torch.randn(3, 5, 6))
    query = torch.randn(3, 4, 6)  # (B, T, Q)
    context, weights = attention(query, attention.project_keys(memory), memory, mask)
    assert context.shape == (3, 4, 6) and weights.shape == (3, 4, 5)
    assert torch.all(weights.masked_select(~mask.unsqueeze(1).expand_as(weights)) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4))
    other = attention(query, attention.project_keys(garbage), garbage, mask)
    torch.testing.assert_close(other, (context, weights))
    # One step at a time (B, Q) gives the same as all steps at once (B, T, Q).
    for t in range(4):
        step = attention(query[:, t], attention.project_keys(memory), memory, mask)
        torch.testing.assert_close(step, (context[:, t], weights[:, t]))


@pytest.mark.parametrize("attention", ATTENTION_CHOICES)
@pytest.mark.parametrize("input_feeding", [True, False])
def test_padding_changes_nothing(attention, input_feeding):
    model = make(attention=attention, input_feeding=input_feeding).eval()
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


# Every cell x attention x input feeding; the other options rotate along the grid so that
# each of their values meets both input_feeding settings (test_option_grid_coverage checks).
OPTIONS = list(itertools.product(CELLS, ATTENTION_CHOICES, [True, False]))


def grid_options(i: int) -> dict:
    cell, attention, input_feeding = OPTIONS[i]
    j = i // 2  # the same for both input_feeding settings of one cell x attention
    kwargs = {
        "cell": cell, "attention": attention, "input_feeding": input_feeding,
        "bidirectional": (j % 2 == 0) != input_feeding,
        "bridge": ("linear", "zeros")[(j // 2) % 2],
        "encoder_layers": 1 + (j // 3) % 2, "decoder_layers": 1 + (j + input_feeding) % 2,
        "attention_size": (None, 10)[j % 3 == 2],
        "tie_embeddings": j % 3 != 1, "tie_src_tgt": j % 5 == 0, "dropout": 0.1,
    }
    if attention == "luong_dot":  # needs decoder size == encoder output size
        kwargs["decoder_hidden"] = 12 if kwargs["bidirectional"] else 6
    if attention == "none":  # without attention only the bridge carries the source
        kwargs["bridge"] = "linear"
    return kwargs


def test_option_grid_coverage():
    seen: dict[tuple[str, object], set[bool]] = {}
    for i in range(len(OPTIONS)):
        kwargs = grid_options(i)
        for key, value in kwargs.items():
            seen.setdefault((key, value), set()).add(kwargs["input_feeding"])
    for key, values in [("cell", CELLS), ("attention", ATTENTION_CHOICES),
                        ("bidirectional", [True, False]), ("bridge", ["linear", "zeros"]),
                        ("encoder_layers", [1, 2]), ("decoder_layers", [1, 2]),
                        ("attention_size", [None, 10]), ("tie_embeddings", [True, False]),
                        ("tie_src_tgt", [True, False])]:
        for value in values:
            assert seen.get((key, value)) == {True, False}, (key, value)


@pytest.mark.parametrize("i", range(len(OPTIONS)), ids=["-".join(map(str, o)) for o in OPTIONS])
def test_every_option_runs_forward_and_backward(i):
    model = make(**grid_options(i))
    src, lengths, tgt = toy_batch(i)
    loss, _, n = label_smoothed_nll(model(src, lengths, tgt), tgt, 0.1)
    (loss / n).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.rnn.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("attention", "gate"), GATES)
def test_fast_path_equals_step_loop(cell, attention, gate):
    model = make(cell=cell, attention=attention, input_feeding=False, decoder_layers=2,
                 attention_gate=gate).eval()
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


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("attention", "gate"), GATES)
@pytest.mark.parametrize("input_feeding", [True, False])
def test_step_reproduces_teacher_forcing(cell, attention, input_feeding, gate):
    model = make(cell=cell, attention=attention, input_feeding=input_feeding,
                 attention_gate=gate).eval()
    src, lengths, tgt = toy_batch()
    with torch.no_grad():
        ref, ref_attn = model.forward_with_attention(src, lengths, tgt)
        enc = model.encode(src, lengths)
        state = model.init_state(enc)
        steps, attns = [], []
        for t in range(tgt.size(1)):
            logits, state, attn = model.step(tgt[:, t], state, enc)
            steps.append(logits)
            attns.append(attn)
    torch.testing.assert_close(torch.stack(steps, 1), ref, atol=1e-5, rtol=1e-5)
    if attention == "none":
        assert ref_attn is None and all(a is None for a in attns)
    else:
        torch.testing.assert_close(torch.stack(attns, 1), ref_attn, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_step_leaves_the_state_untouched(cell):
    model = make(cell=cell, decoder_layers=2).eval()
    src, lengths, tgt = toy_batch()
    enc = model.encode(src, lengths)
    state = model.init_state(enc)
    before = [t.clone() for t in state_tensors(state)]
    _, new, _ = model.step(tgt[:, 0], state, enc)
    for old, copy in zip(state_tensors(state), before, strict=True):
        assert torch.equal(old, copy)
    assert not any(torch.equal(a, b) for a, b in zip(state_tensors(new), before, strict=True))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(("encoder_layers", "decoder_layers"), [(1, 2), (2, 1), (2, 3)])
def test_bridge(cell, encoder_layers, decoder_layers):
    sizes = {"cell": cell, "encoder_layers": encoder_layers, "decoder_layers": decoder_layers}
    src, lengths, _ = toy_batch()
    other = toy_batch(seed=1)[0]
    model = make(bridge="linear", **sizes).eval()
    first = state_tensors(model.init_state(model.encode(src, lengths)))
    second = state_tensors(model.init_state(model.encode(other, lengths)))
    n = 2 if cell == "lstm" else 1
    for h, h_other in zip(first[:n], second[:n], strict=True):
        assert h.shape == (decoder_layers, 4, 12)
        assert h.abs().max() < 1  # tanh
        assert not torch.equal(h, h_other)  # the initial state depends on the source
    assert torch.equal(first[n], torch.zeros(4, 12))  # input feed starts at zero
    zeros = make(bridge="zeros", **sizes).eval()
    for t in state_tensors(zeros.init_state(zeros.encode(src, lengths))):
        assert not t.any()


def test_reorder_selects_rows():
    model = make().eval()
    src, lengths, _ = toy_batch()
    enc = model.encode(src, lengths)
    index = torch.tensor([2, 2, 0])
    picked = model.reorder_encoder(enc, index)
    torch.testing.assert_close(picked.memory, enc.memory[index])
    torch.testing.assert_close(picked.keys, enc.keys[index])
    assert torch.equal(picked.mask, enc.mask[index])
    torch.testing.assert_close(picked.final[1], enc.final[1][index])
    state = model.init_state(enc)
    picked_state = model.reorder_state(state, index)
    torch.testing.assert_close(picked_state.hidden[0], state.hidden[0][:, index])
    torch.testing.assert_close(picked_state.hidden[1], state.hidden[1][:, index])
    torch.testing.assert_close(picked_state.feed, state.feed[index])


def test_tied_embeddings_share_one_tensor():
    model = make(tie_embeddings=True, tie_src_tgt=True)
    assert model.generator.weight is model.tgt_embed.weight is model.encoder.embed.weight
    assert model.pre_output is not None  # decoder 12 -> embedding 8 before the tied layer
    same = make(tie_embeddings=True, decoder_hidden=8)
    assert same.pre_output is None and same.generator.weight is same.tgt_embed.weight
    untied = make(tie_embeddings=False)
    assert untied.generator.weight is not untied.tgt_embed.weight
    assert untied.encoder.embed is not untied.tgt_embed and untied.pre_output is None


def test_padding_embedding_stays_zero():
    model = make(pad_id=3)
    assert model.encoder.embed.padding_idx == model.tgt_embed.padding_idx == 3
    assert not model.tgt_embed.weight[3].any() and not model.encoder.embed.weight[3].any()
    assert model.tgt_embed.weight[0].any()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cell": "transformer"}, "unknown cell 'transformer'; valid choices: rnn, gru, lstm"),
    ({"attention": "magic"}, "unknown attention 'magic'; valid choices: bahdanau, luong_dot, "
                             "luong_general, luong_concat, none"),
    ({"bridge": "mlp"}, "unknown bridge 'mlp'; valid choices: linear, zeros"),
    ({"emb_size": 0}, "emb_size must be a positive integer, got 0"),
    ({"decoder_hidden": -3}, "decoder_hidden must be a positive integer"),
    ({"attention_size": 0}, "attention_size must be a positive integer"),
    ({"decoder_layers": 1.5}, "decoder_layers must be a positive integer"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
    ({"attention": "luong_dot", "decoder_hidden": 7}, "luong_dot attention needs decoder_hidden"),
    ({"attention": "none", "bridge": "zeros"}, "the decoder would never see the source"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_tie_src_tgt_needs_joint_vocabulary():
    with pytest.raises(ValueError, match="tie_src_tgt needs one joint vocabulary"):
        build_model({"tie_src_tgt": True}, 10, 12)


def test_build_attention_unknown_name():
    with pytest.raises(ValueError, match="valid choices: bahdanau, luong_dot, luong_general"):
        build_attention("cosine", 4, 4, 4)
    assert build_attention("none", 4, 4, 4) is None


def test_tiny_model_overfits():
    rng = np.random.default_rng(0)
    pairs = [(i, rng.integers(4, V, rng.integers(2, 8)), rng.integers(4, V, rng.integers(2, 8)))
             for i in range(6)]
    batch = collate(pairs)  # padded source and target, BOS/EOS added
    torch.manual_seed(0)
    model = build_model({"emb_size": 32, "encoder_hidden": 32, "decoder_hidden": 32,
                         "dropout": 0.0}, V, V)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss, nll, n = label_smoothed_nll(model(batch.src, batch.src_lengths, batch.tgt_in),
                                          batch.tgt_out, 0.0)
        if nll.item() / n.item() < 0.05:  # converged: no need to spend the remaining steps
            break
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
    assert nll.item() / n.item() < 0.1


def test_dropout_draws_a_scaled_bernoulli_mask():
    """nmt.model.dropout.Dropout: keeps each element with probability 1 - p, scales the
    kept ones by 1 / (1 - p), is reproducible from the seed, passes gradients through the
    mask only, and is the identity in evaluation."""
    from nmt.model.dropout import Dropout

    drop = Dropout(0.3)
    x = torch.randn(200, 500, requires_grad=True)
    torch.manual_seed(5)
    y = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), y)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01  # 100,000 draws: sd 0.0015
    torch.testing.assert_close(y[kept], x[kept] / 0.7)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.7)
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)

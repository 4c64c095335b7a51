"""Word dropout (model.word_dropout) and the LSTM's forget-gate bias at init
(model.forget_bias): what they change, and that they change nothing else."""

from __future__ import annotations

import pytest
import torch

from nmt.cli.config import check_overrides
from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.model import build_model
from nmt.model.dropout import drop_words
from nmt.model.registry import model_from_checkpoint, model_record

V = 40


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (6, 9), generator=g)
    src[:, -1] = EOS_ID
    src[3, 5:] = PAD_ID
    src[3, 4] = EOS_ID
    lengths = (src != PAD_ID).sum(1)
    tgt_in = torch.randint(4, V, (6, 7), generator=g)
    tgt_in[:, 0] = BOS_ID
    return src, lengths, tgt_in


def test_drop_words_replaces_real_tokens_by_unk_at_rate_p():
    torch.manual_seed(0)
    ids = torch.randint(0, 500, (200, 100))
    dropped = drop_words(ids, 0.25)
    changed = dropped != ids
    assert (dropped[changed] == UNK_ID).all()
    real = ids > EOS_ID  # PAD, UNK, BOS and EOS are never dropped
    assert not changed[~real].any()
    assert changed[real].float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_no_word_dropout_draws_nothing():
    ids = torch.randint(0, 50, (4, 5))
    state = torch.get_rng_state()
    assert drop_words(ids, 0.0) is ids
    assert torch.equal(torch.get_rng_state(), state)


def record_inputs(model) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    model.tgt_embed.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    return seen


def test_word_dropout_in_training_only_on_both_sides():
    torch.manual_seed(1)
    model = build_model({"word_dropout": 0.5, "dropout": 0.0, "tie_src_tgt": True}, V, V)
    src, lengths, tgt_in = batch()
    seen = record_inputs(model)  # one embedding: the source's, then the target's inputs
    model.train()
    model(src, lengths, tgt_in)
    enc_in, dec_in = seen
    for given, used in ((src, enc_in), (tgt_in, dec_in)):
        dropped = used != given
        assert (used[dropped] == UNK_ID).all()
        assert 0.3 < dropped[given > EOS_ID].float().mean() < 0.7
        assert torch.equal(used[given <= EOS_ID], given[given <= EOS_ID])
    seen.clear()
    model.eval()
    model(src, lengths, tgt_in)
    assert torch.equal(seen[0], src) and torch.equal(seen[1], tgt_in)


def test_word_dropout_leaves_weights_and_evaluation_unchanged():
    src, lengths, tgt_in = batch()
    torch.manual_seed(2)
    plain = build_model({}, V, V).eval()
    torch.manual_seed(2)
    dropping = build_model({"word_dropout": 0.3}, V, V).eval()
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), dropping.parameters(),
                                                 strict=True))
    assert torch.equal(plain(src, lengths, tgt_in), dropping(src, lengths, tgt_in))


def test_forget_bias_sets_only_the_forget_rows_of_every_lstm():
    config = {"encoder_layers": 2, "decoder_layers": 2}
    torch.manual_seed(3)
    plain = dict(build_model(config, V, V).named_parameters())
    torch.manual_seed(3)
    model = build_model({**config, "forget_bias": 1.0}, V, V)
    changed = set()
    for name, param in model.named_parameters():
        if not torch.equal(param, plain[name]):
            changed.add(name)
    lstms = {n for n in plain if ".rnn.bias_" in n}
    assert changed == lstms and len(lstms) == 4 * 2 + 2 * 2  # bi-encoder 2 layers, decoder 2
    for name in lstms:
        hidden = model.get_parameter(name).numel() // 4
        rows = slice(hidden, 2 * hidden)  # gates (i, f, g, o)
        want = 1.0 if "bias_ih" in name else 0.0
        assert (model.get_parameter(name)[rows] == want).all()
        others = torch.cat([model.get_parameter(name)[:hidden],
                            model.get_parameter(name)[2 * hidden:]])
        assert torch.equal(others, torch.cat([plain[name][:hidden], plain[name][2 * hidden:]]))


def test_a_checkpoint_keeps_its_trained_forget_bias():
    torch.manual_seed(4)
    model = build_model({"forget_bias": 1.0}, V, V)
    with torch.no_grad():
        model.decoder.rnn.bias_ih_l0.add_(0.5)  # "training"
    checkpoint = {"model_record": model_record(model),
                  "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    rebuilt = model_from_checkpoint(checkpoint)
    assert torch.equal(rebuilt.decoder.rnn.bias_ih_l0, model.decoder.rnn.bias_ih_l0)
    assert rebuilt.record["config"]["forget_bias"] == 1.0


@pytest.mark.parametrize("config, match", [
    ({"forget_bias": 1.0, "cell": "gru"}, "forget_bias is the LSTM's forget-gate bias; cell=gru"),
    ({"forget_bias": "high"}, "forget_bias must be a number or null"),
    ({"word_dropout": 1.0}, r"word_dropout must be in \[0, 1\), got 1.0"),
    ({"word_dropout": True}, "word_dropout must be in"),
])
def test_bad_values_are_one_line_errors(config, match):
    with pytest.raises(ValueError, match=match):
        build_model(config, V, V)


def test_train_config_takes_both():
    cfg = check_overrides("train", ["model.word_dropout=0.2", "model.forget_bias=1.0"])
    assert cfg.model.word_dropout == 0.2 and cfg.model.forget_bias == 1.0
    default = check_overrides("train", [])
    assert default.model.word_dropout == 0.0 and default.model.forget_bias is None

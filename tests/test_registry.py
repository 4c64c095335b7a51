"""The model registry: every registered part builds, new parts plug in, checkpoints rebuild.

The legacy tests rebuild nmt/model as of commit 020d7c5 (before the registry) from git and
check that weights, logits and old checkpoints are unchanged; without that commit in the
history (a shallow clone) they are skipped.
"""

from __future__ import annotations

import functools
import importlib
import io
import itertools
import subprocess
import sys

import pytest
import torch
from test_model import OPTIONS, grid_options, toy_batch
from torch import nn
from train_helpers import ROOT

from nmt.core.errors import CheckpointError
from nmt.decoding.options import Decoding
from nmt.decoding.search import greedy_search
from nmt.model import build_model, model_from_checkpoint, model_record
from nmt.model.attention import ATTENTIONS, Attention, attention_choices, register_attention
from nmt.model.cells import CELLS, register_cell
from nmt.model.encoder import Encoder, sequence_mask
from nmt.model.registry import ENCODERS, register_encoder, upgrade_checkpoint
from nmt.model.seq2seq import LEGACY_NAMES
from nmt.training.module import TranslationModule, label_smoothed_nll

V = 23
SMALL = {"emb_size": 8, "encoder_hidden": 6, "decoder_hidden": 12, "dropout": 0.0}
LEGACY_COMMIT = "020d7c5"

pytestmark = pytest.mark.usefixtures("one_thread")


def built(config: dict, src_vocab: int = V, tgt_vocab: int = V):
    """SMALL with ``config``; encoder_hidden only for the RNN encoder (others refuse it),
    a tiny CNN (12 channels) for the image encoder."""
    small = SMALL if config.get("encoder", "rnn") == "rnn" else {
        k: v for k, v in SMALL.items() if k != "encoder_hidden"}
    if config.get("encoder") == "image":
        small = {**small, "channels": [4, 4, 4, 4, 12], "image_size": 16}
    torch.manual_seed(0)
    return build_model({**small, **config}, src_vocab, tgt_vocab)


@pytest.mark.parametrize(("encoder", "cell", "attention"), list(itertools.product(
    list(ENCODERS), list(CELLS), attention_choices())))
def test_every_registered_combination_builds(encoder, cell, attention):
    model = built({"encoder": encoder, "cell": cell, "attention": attention,
                   "decoder_hidden": 12 if attention == "luong_dot" else 10})
    src, lengths, tgt = toy_batch()
    if encoder == "image":  # 16x16 images: a 2x2 grid
        src, lengths = torch.randn(4, 3, 16, 16), torch.full((4,), 4)
    assert model(src, lengths, tgt).shape == (4, 6, V)
    assert model.record["config"]["encoder"] == encoder


@pytest.mark.parametrize(("config", "match"), [
    ({"encoder": "resnet"}, r"^unknown encoder 'resnet'; valid choices: rnn, image$"),
    ({"cell": "transformer"},
     r"^unknown cell 'transformer'; valid choices: rnn, gru, lstm, ln_lstm$"),
    ({"attention": "magic"}, r"^unknown attention 'magic'; valid choices: bahdanau, luong_dot, "
                             r"luong_general, luong_concat, none$"),
    ({"bridge": "mlp"}, r"^unknown bridge 'mlp'; valid choices: linear, zeros$"),
    ({"hidden": 3}, r"^unknown key\(s\) \['hidden'\] for encoder 'rnn'; valid keys: .*"
                    r"decoder_hidden.*encoder_hidden"),
    ({"encoder_hidden": None}, "encoder_hidden must be a positive integer, got None"),
])
def test_unknown_names_list_the_valid_ones(config, match):
    with pytest.raises(ValueError, match=match):
        built(config)


def test_names_are_never_silently_replaced():
    with pytest.raises(ValueError, match="cell 'gru' is already registered"):
        register_cell("gru", nn.GRU)
    with pytest.raises(ValueError, match="attention 'bahdanau' is already registered"):
        register_attention("bahdanau", Attention)
    with pytest.raises(ValueError, match="encoder 'rnn' is already registered"):
        register_encoder("rnn", lambda *args: None)


# --- new parts, registered from here ----------------------------------------------------------


@pytest.fixture
def registries():
    """Every registry as it was after the test: what a test registers does not leak."""
    saved = [(table, dict(table)) for table in (CELLS, ATTENTIONS, ENCODERS)]
    yield
    for table, content in saved:
        table.clear()
        table.update(content)


class ScaledDotAttention(Attention):
    """q . W k / sqrt(Q): a new attention needs only keys and a score."""

    def __init__(self, query_size: int, memory_size: int, attention_size: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(memory_size, query_size, bias=False)
        self.scale = query_size ** -0.5

    def project_keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # (B, S, Q)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2)) * self.scale  # (B, T, S)


class BagEncoder(Encoder):
    """Each position is its token's embedding; the final state is their mean (one tensor,
    which the bridge uses for both h and c of an LSTM decoder)."""

    def __init__(self, embed: nn.Embedding) -> None:
        super().__init__()
        self.embed = embed
        self.output_size = embed.embedding_dim

    def forward(self, src, src_lengths):
        mask = sequence_mask(src_lengths, src.size(1))  # (B, S)
        memory = self.embed(src) * mask.unsqueeze(-1)  # (B, S, M)
        return memory, mask, memory.sum(1) / src_lengths.unsqueeze(1)  # final (B, M)


def build_bag(config, src_vocab_size, pad_id, shared):
    return BagEncoder(shared if shared is not None
                      else nn.Embedding(src_vocab_size, config["bag_size"], padding_idx=pad_id))


# relu_slow has no one-step kernel: the decoder falls back to calling the recurrence.
RELU_RNN = functools.partial(nn.RNN, nonlinearity="relu")
NEW_PARTS = {
    "cell": {"cell": "relu", "attention": "scaled_dot", "input_feeding": True},
    "cell_without_kernel": {"cell": "relu_slow", "decoder_layers": 2},
    "attention": {"attention": "scaled_dot", "cell": "lstm"},
    "encoder": {"encoder": "bag", "bag_size": 5, "cell": "lstm", "bridge": "linear"},
    "encoder_zeros_bridge": {"encoder": "bag", "cell": "gru", "bridge": "zeros"},
}


@pytest.mark.parametrize("which", list(NEW_PARTS))
def test_registered_parts_train_and_decode(registries, which):
    register_cell("relu", RELU_RNN, torch.rnn_relu_cell)
    register_cell("relu_slow", RELU_RNN)
    register_attention("scaled_dot", ScaledDotAttention)
    register_encoder("bag", build_bag, bag_size=16)
    model = built(NEW_PARTS[which])
    src, lengths, tgt = toy_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss, _, n = label_smoothed_nll(model(src, lengths, tgt), tgt, 0.1)
    (loss / n).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
    hyps = greedy_search(model.eval(), src, lengths, Decoding(beam_size=1, max_len_a=0,
                                                              max_len_b=5))
    assert len(hyps) == 4 and all(1 <= len(h[0].tokens) <= 5 for h in hyps)
    torch.testing.assert_close(model_from_checkpoint(checkpoint_of(model))(src, lengths, tgt),
                               model(src, lengths, tgt), rtol=0, atol=0)


def test_a_cell_without_kernel_gives_what_its_kernel_gives(registries):
    register_cell("relu", RELU_RNN, torch.rnn_relu_cell)
    register_cell("relu_slow", RELU_RNN)
    src, lengths, tgt = toy_batch()
    for input_feeding in (True, False):  # the step loop, and the whole-sequence path
        fast = built({"cell": "relu", "decoder_layers": 2, "input_feeding": input_feeding})
        slow = built({"cell": "relu_slow", "decoder_layers": 2, "input_feeding": input_feeding})
        with torch.no_grad():
            torch.testing.assert_close(slow(src, lengths, tgt), fast(src, lengths, tgt),
                                       atol=1e-5, rtol=1e-5)


def test_an_encoder_without_token_embeddings_refuses_tie_src_tgt(registries):
    def build_refusing(config, src_vocab_size, pad_id, shared):
        if shared is not None:
            raise ValueError("the image encoder has no token embeddings to share")
        return BagEncoder(nn.Embedding(src_vocab_size, 8))

    register_encoder("pixels", build_refusing)
    with pytest.raises(ValueError, match="no token embeddings to share"):
        built({"encoder": "pixels", "tie_src_tgt": True})
    assert built({"encoder": "pixels"}).encoder.output_size == 8


# --- checkpoints ------------------------------------------------------------------------------


def checkpoint_of(model, record: bool = True) -> dict:
    """What a Lightning checkpoint holds of the model, through torch.save/load."""
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model": {"cell": "unused"}, "src_vocab_size": 1,
                                 "tgt_vocab_size": 1}}
    if record:
        ckpt["model_record"] = model_record(model)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("i", range(0, len(OPTIONS), 3))
def test_checkpoint_round_trip_gives_identical_logits(i):
    model = built({**grid_options(i), "dropout": 0.0}, V, V).eval()
    loaded = model_from_checkpoint(checkpoint_of(model)).eval()
    src, lengths, tgt = toy_batch(i)
    with torch.no_grad():
        assert torch.equal(loaded(src, lengths, tgt), model(src, lengths, tgt))
    assert loaded.record == model.record


def test_record_holds_every_option_and_only_plain_values():
    model = built({"cell": "gru"}, V, 30)
    record = model_record(model)
    assert record["src_vocab_size"] == V and record["tgt_vocab_size"] == 30
    assert record["config"]["cell"] == "gru" and record["config"]["encoder_layers"] == 1
    assert record["config"]["encoder"] == "rnn" and record["pad_id"] == 0
    assert record["architecture"] == "seq2seq"
    record["config"]["cell"] = "lstm"  # a copy: the model's own record is untouched
    assert model.record["config"]["cell"] == "gru"


def test_lightning_module_saves_the_record():
    module = TranslationModule(11, 13, {**SMALL, "cell": "rnn"},
                               {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    assert ckpt["model_record"]["config"]["cell"] == "rnn"
    assert ckpt["model_record"]["tgt_vocab_size"] == 13


def legacy_names(state: dict) -> dict:
    """Today's parameter names -> those of checkpoints written before the registry."""
    renamed = {}
    for key, value in state.items():
        for old, new in LEGACY_NAMES.items():
            if key.startswith(new):
                key = old + key[len(new):]
        renamed[key] = value
    return renamed


def test_checkpoint_without_record_loads_from_hyperparameters():
    model = built({"cell": "gru", "tie_src_tgt": True}).eval()
    ckpt = checkpoint_of(model, record=False)
    ckpt["state_dict"] = {f"model.{k}": v for k, v in legacy_names(model.state_dict()).items()}
    ckpt["hyper_parameters"] = {"model": {**SMALL, "cell": "gru", "tie_src_tgt": True},
                                "src_vocab_size": V, "tgt_vocab_size": V}
    assert "model.src_embed.weight" in ckpt["state_dict"]
    loaded = model_from_checkpoint(ckpt).eval()
    src, lengths, tgt = toy_batch()
    with torch.no_grad():
        assert torch.equal(loaded(src, lengths, tgt), model(src, lengths, tgt))


@pytest.mark.parametrize(("change", "match"), [
    (lambda c: c["model_record"]["config"].update(encoder="resnet"),
     r"^model\.ckpt: .*\(unknown encoder 'resnet'; valid choices: rnn, image\)$"),
    (lambda c: c["model_record"].update(tgt_vocab_size=V + 1), r"^model\.ckpt: .*size mismatch"),
    (lambda c: c["state_dict"].pop("model.generator.bias"), r"Missing key.*generator\.bias"),
    (lambda c: c["model_record"].update(version=99), "model record version 99"),
    (lambda c: c["model_record"].update(architecture="transformer"),
     r"architecture 'transformer'; this toolkit builds 'seq2seq'"),
    (lambda c: c.pop("model_record"), r"\(.*'src_vocab_size'"),  # hyper_parameters incomplete
])
def test_checkpoint_that_does_not_fit(change, match):
    ckpt = checkpoint_of(built({}))
    del ckpt["hyper_parameters"]["src_vocab_size"]
    change(ckpt)
    with pytest.raises(CheckpointError, match=match):
        model_from_checkpoint(ckpt, "model.ckpt")


def test_model_record_needs_build_model():
    model = built({})
    model.record = None
    with pytest.raises(ValueError, match="not built by build_model"):
        model_record(model)


# --- against the code before the registry -----------------------------------------------------


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """nmt/model of commit 020d7c5 as the package ``legacy_model``, its nn.Dropout
    replaced by nmt.model.dropout's (which draws other masks): what is compared is the
    refactoring, with the same random draws."""
    package = tmp_path_factory.mktemp("legacy") / "legacy_model"
    package.mkdir()
    for name in ("__init__", "attention", "decoder", "encoder", "seq2seq"):
        shown = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:nmt/model/{name}.py"],
                               cwd=ROOT, capture_output=True, text=True)
        if shown.returncode != 0:
            pytest.skip(f"commit {LEGACY_COMMIT} is not in this clone's history")
        text = shown.stdout.replace("nmt.model.", "legacy_model.")
        ours = "from torch import nn\n\nfrom nmt.model.dropout import Dropout\n"
        text = text.replace("nn.Dropout(", "Dropout(").replace("from torch import nn\n", ours)
        (package / f"{name}.py").write_text(text.replace("from nmt.model import",
                                                          "from legacy_model import"))
    sys.path.insert(0, str(package.parent))
    try:
        return importlib.import_module("legacy_model")
    finally:
        sys.path.remove(str(package.parent))


@pytest.mark.parametrize("i", range(len(OPTIONS)))
def test_same_seed_same_weights_and_logits_as_before(legacy, i):
    kwargs = {**SMALL, **grid_options(i)}  # dropout 0.1: training-mode logits use the RNG too
    torch.manual_seed(0)
    old = legacy.Seq2Seq(V, V, **kwargs)
    new = built(kwargs)
    renamed, reference = legacy_names(new.state_dict()), old.state_dict()
    assert set(renamed) == set(reference)
    for key, value in reference.items():
        assert torch.equal(renamed[key], value), key
    src, lengths, tgt = toy_batch(i)
    torch.manual_seed(1)
    old_logits = old(src, lengths, tgt)
    torch.manual_seed(1)
    assert torch.equal(new(src, lengths, tgt), old_logits)


@pytest.mark.parametrize("tie_src_tgt", [False, True])
def test_old_checkpoint_loads_with_identical_logits(legacy, tie_src_tgt):
    config = {**SMALL, "cell": "lstm", "tie_src_tgt": tie_src_tgt, "encoder_layers": 2}
    torch.manual_seed(3)
    old = legacy.Seq2Seq(V, V, **config).eval()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in old.state_dict().items()},
            "hyper_parameters": {"model": config, "src_vocab_size": V, "tgt_vocab_size": V}}
    new = model_from_checkpoint(ckpt).eval()
    src, lengths, tgt = toy_batch()
    with torch.no_grad():
        assert torch.equal(new(src, lengths, tgt), old(src, lengths, tgt))


@pytest.mark.parametrize("tie_src_tgt", [False, True])
def test_old_optimizer_state_follows_the_parameters(legacy, tie_src_tgt):
    """Resuming an old checkpoint: Adam's moments land on the parameters they belong to."""
    config = {**SMALL, "cell": "gru", "tie_src_tgt": tie_src_tgt, "tie_embeddings": False}
    torch.manual_seed(0)
    old = legacy.Seq2Seq(V, V, **config)
    old_opt = torch.optim.Adam(old.parameters())
    src, lengths, tgt = toy_batch()
    old(src, lengths, tgt).sum().backward()
    old_opt.step()
    ckpt = {"optimizer_states": [old_opt.state_dict()]}
    new = built(config)
    upgrade_checkpoint(ckpt, new)
    new_opt = torch.optim.Adam(new.parameters())
    new_opt.load_state_dict(ckpt["optimizer_states"][0])
    old_moments = {n: old_opt.state[p]["exp_avg"] for n, p in old.named_parameters()}
    for name, p in new.named_parameters():
        legacy_name = next(iter(legacy_names({name: None})))
        assert torch.equal(new_opt.state[p]["exp_avg"], old_moments[legacy_name]), name

"""The one place a model is built, from a plain config, and rebuilt from a checkpoint.

    model = build_model({"encoder": "rnn", "cell": "gru"}, src_vocab_size, tgt_vocab_size)
    checkpoint["model_record"] = model.record      # what the model is, with every option
    model = model_from_checkpoint(checkpoint)      # no training config needed

The config is flat (Hydra's ``model`` group): the options below (MODEL_DEFAULTS)
plus those of the chosen encoder. Encoders ("rnn": tokens; "image": a CNN's feature
grid, nmt.model.image_encoder), attentions (nmt.model.attention) and cells
(nmt.model.cells) are registered by name; an unknown name is a ValueError that lists
the valid ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from nmt.core.errors import CheckpointError
from nmt.core.tokens import PAD_ID
from nmt.model.attention import attention_choices
from nmt.model.cells import check_forget_bias, get_cell, set_forget_bias
from nmt.model.encoder import Encoder, RNNEncoder
from nmt.model.image_encoder import IMAGE_DEFAULTS, build_image_encoder, check_image_options
from nmt.model.seq2seq import BRIDGES, LEGACY_NAMES, Seq2Seq

# Options of every model (the decoder side) and their defaults, Seq2Seq's before the
# registry; emb_size, cell and dropout are the encoder's too where it has such things.
MODEL_DEFAULTS: dict[str, Any] = {
    "encoder": "rnn", "emb_size": 256, "cell": "lstm", "decoder_hidden": 512,
    "decoder_layers": 1, "attention": "bahdanau", "attention_size": None,
    "input_feeding": True, "bridge": "linear", "dropout": 0.2, "tie_embeddings": True,
    "tie_src_tgt": False, "attention_gate": False, "word_dropout": 0.0, "forget_bias": None,
}
# Checked to be positive integers wherever they appear (None: unset).
SIZES = ("emb_size", "encoder_hidden", "encoder_layers", "decoder_hidden", "decoder_layers",
         "attention_size")
RECORD_VERSION = 1
# The one architecture so far: an attention RNN decoder over any registered encoder
# (the encoder's name is in the config).
ARCHITECTURE = "seq2seq"

# (config with every option, src_vocab_size, pad_id, target embedding to share or None)
EncoderBuilder = Callable[[dict[str, Any], int, int, nn.Embedding | None], Encoder]


@dataclass(frozen=True)
class EncoderEntry:
    build: EncoderBuilder
    defaults: dict[str, Any]  # the encoder's own options and their defaults
    check: Callable[[dict[str, Any]], None] | None = None  # ValueErrors for bad options
    weights_options: tuple[str, ...] = ()  # options that only choose the initial weights


ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, build: EncoderBuilder, *,
                     check: Callable[[dict[str, Any]], None] | None = None,
                     weights_options: tuple[str, ...] = (), **defaults: Any) -> None:
    """Make ``name`` a valid ``model.encoder``; ``defaults`` are its own options.

    ``build(config, src_vocab_size, pad_id, shared)`` returns an Encoder; ``shared`` is
    the target embedding when the config asks for tie_src_tgt (None otherwise), which
    an encoder without token embeddings should refuse with a ValueError.
    ``check(config)`` raises a one-line ValueError for a bad value of the encoder's
    options (resolve_config calls it). ``weights_options`` only choose the initial
    weights (a pretrained file): a model rebuilt from a checkpoint, whose weights are
    in the checkpoint, is built with their defaults. (Neither name can be an option.)
    """
    if name in ENCODERS:
        raise ValueError(f"encoder {name!r} is already registered")
    ENCODERS[name] = EncoderEntry(build, defaults, check, weights_options)


def _rnn_encoder(config: dict[str, Any], src_vocab_size: int, pad_id: int,
                 shared: nn.Embedding | None) -> Encoder:
    embed = (shared if shared is not None
             else nn.Embedding(src_vocab_size, config["emb_size"], padding_idx=pad_id))
    return RNNEncoder(embed, config["cell"], config["encoder_hidden"], config["encoder_layers"],
                      config["bidirectional"], config["dropout"], config["word_dropout"])


register_encoder("rnn", _rnn_encoder, encoder_hidden=256, encoder_layers=1, bidirectional=True)
register_encoder("image", build_image_encoder, check=check_image_options,
                 weights_options=("pretrained",), **IMAGE_DEFAULTS)


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Every option of the model ``config`` describes, defaults filled in; unknown names
    and keys and bad sizes are ValueErrors."""
    name = config.get("encoder", MODEL_DEFAULTS["encoder"])
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; valid choices: {', '.join(ENCODERS)}")
    entry = ENCODERS[name]
    full = {**MODEL_DEFAULTS, **entry.defaults, **copy.deepcopy(dict(config))}
    # Plain values only (lists, not tuples): the record goes through Hydra and torch.load.
    full = {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()}
    unknown = sorted(set(full) - set(MODEL_DEFAULTS) - set(entry.defaults))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} for encoder {name!r}; valid keys: "
                         f"{', '.join(sorted({**MODEL_DEFAULTS, **entry.defaults}))}")
    get_cell(full["cell"])
    if full["attention"] not in attention_choices():
        raise ValueError(f"unknown attention {full['attention']!r}; valid choices: "
                         f"{', '.join(attention_choices())}")
    if full["bridge"] not in BRIDGES:
        raise ValueError(f"unknown bridge {full['bridge']!r}; valid choices: "
                         f"{', '.join(BRIDGES)}")
    for key in SIZES:
        value = full.get(key)
        unset = key == "attention_size" and value is None  # None: decoder_hidden
        if key in full and not unset and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key in ("dropout", "word_dropout"):
        value = full[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise ValueError(f"{key} must be in [0, 1), got {value!r}")
    check_forget_bias(full["forget_bias"], full["cell"])
    if not isinstance(full["attention_gate"], bool):
        raise ValueError(f"attention_gate must be true or false, got {full['attention_gate']!r}")
    if entry.check is not None:
        entry.check(full)
    return full


def build_model(config: dict[str, Any], src_vocab_size: int, tgt_vocab_size: int,
                pad_id: int = PAD_ID) -> Seq2Seq:
    """The model ``config`` describes (see MODEL_DEFAULTS and the encoder's options)."""
    full = resolve_config(config)
    for key, value in (("src_vocab_size", src_vocab_size), ("tgt_vocab_size", tgt_vocab_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if full["tie_src_tgt"] and src_vocab_size != tgt_vocab_size:
        raise ValueError(f"tie_src_tgt needs one joint vocabulary, but the source has "
                         f"{src_vocab_size} and the target {tgt_vocab_size} entries")
    # The target embedding before the encoder: the random draws then come in the order of
    # earlier versions (source and target embeddings first, each as many numbers as its
    # size, both redrawn in Seq2Seq), so one seed gives the same weights as it did.
    tgt_embed = nn.Embedding(tgt_vocab_size, full["emb_size"], padding_idx=pad_id)
    encoder = ENCODERS[full["encoder"]].build(full, src_vocab_size, pad_id,
                                              tgt_embed if full["tie_src_tgt"] else None)
    model = Seq2Seq(encoder, tgt_embed, full["cell"], full["decoder_hidden"],
                    full["decoder_layers"], full["attention"], full["attention_size"],
                    full["input_feeding"], full["bridge"], full["dropout"],
                    full["tie_embeddings"], full["attention_gate"], full["word_dropout"])
    if full["forget_bias"] is not None:
        set_forget_bias(model, full["forget_bias"])
    model.record = {"version": RECORD_VERSION, "architecture": ARCHITECTURE, "config": full,
                    "src_vocab_size": src_vocab_size, "tgt_vocab_size": tgt_vocab_size,
                    "pad_id": pad_id}
    return model


def model_record(model: Seq2Seq) -> dict[str, Any]:
    """What a checkpoint keeps to rebuild ``model``: version, full config, vocab sizes,
    pad id (plain values only, for torch.load(weights_only=True))."""
    if model.record is None:
        raise ValueError("the model was not built by build_model: it has no record")
    return copy.deepcopy(model.record)


def _record_of(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's record; checkpoints before records: from the hyperparameters."""
    record = checkpoint.get("model_record")
    if record is not None:
        if record.get("version") != RECORD_VERSION:
            raise ValueError(f"model record version {record.get('version')!r}; this toolkit "
                             f"reads version {RECORD_VERSION}")
        if record.get("architecture", ARCHITECTURE) != ARCHITECTURE:
            raise ValueError(f"architecture {record['architecture']!r}; this toolkit builds "
                             f"{ARCHITECTURE!r}")
        return record
    hp = checkpoint["hyper_parameters"]
    return {"config": hp["model"], "src_vocab_size": hp["src_vocab_size"],
            "tgt_vocab_size": hp["tgt_vocab_size"], "pad_id": PAD_ID}


def _without_weights_options(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the encoder's weights_options at their defaults (e.g. no pretrained
    file to read: a checkpoint holds the weights, and may travel without that file)."""
    entry = ENCODERS.get(config.get("encoder", MODEL_DEFAULTS["encoder"]))
    if entry is None:
        return config
    return {**config, **{k: entry.defaults[k] for k in entry.weights_options if k in config}}


def model_from_checkpoint(checkpoint: dict[str, Any], source: str = "checkpoint") -> Seq2Seq:
    """The model a (torch.load-ed) Lightning checkpoint holds, with its weights.

    A checkpoint that does not fit raises CheckpointError naming ``source``.
    """
    try:
        record = _record_of(checkpoint)
        config = _without_weights_options(record["config"])
        model = build_model(config, record["src_vocab_size"], record["tgt_vocab_size"],
                            record["pad_id"])
        if config != record["config"]:  # the record still says where the weights came from
            model.record = {**model_record(model), "config": resolve_config(record["config"])}
        prefix = "model."  # the LightningModule's attribute
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items()
                 if k.startswith(prefix)}
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        detail = " ".join(str(e).split())  # load_state_dict's first line says little
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(f"{source}: the checkpoint does not fit this toolkit's model "
                              f"({detail})") from None
    return model


def legacy_parameter_order(model: Seq2Seq) -> list[int]:
    """For each parameter of ``model`` (parameters() order), its index among the
    parameters of the same model as built before encoders were registered (020d7c5),
    where the source and target embeddings came before the encoder's RNN."""
    old_modules = ["src_embed", "tgt_embed", "encoder", "decoder", "bridge", "pre_output",
                   "generator"]
    names = [name for name, _ in model.named_parameters()]

    def old_rank(name: str) -> int:
        for old, new in LEGACY_NAMES.items():
            if name.startswith(new):
                name = old + name[len(new):]
        return old_modules.index(name.split(".")[0])

    old_order = sorted(names, key=old_rank)  # stable: the order within modules is unchanged
    return [old_order.index(name) for name in names]


def upgrade_checkpoint(checkpoint: dict[str, Any], model: Seq2Seq) -> None:
    """Make a checkpoint without a model record resumable, in place: its optimizer states
    follow the parameter order of its time (parameter names are mapped on load)."""
    if "model_record" in checkpoint:
        return
    order = legacy_parameter_order(model)
    for optimizer in checkpoint.get("optimizer_states", []):
        state = optimizer.get("state", {})
        optimizer["state"] = {new: state[old] for new, old in enumerate(order) if old in state}

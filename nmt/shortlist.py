"""A lexical shortlist for CPU decoding: the output layer scores only the target pieces
likely for a batch, not the whole vocabulary.

The table is built from the training corpus (``build``, at training time: every
checkpoint carries it as ``checkpoint["shortlist"]``): for every source piece, the
``per_source`` target pieces most associated with it, by the Dice coefficient of the
sentence pairs they occur in, 2 c(s, t) / (c(s) + c(t)) (ties: more pairs first); and
the ``frequent`` most frequent target pieces (punctuation, articles, endings), which
every batch keeps. A batch's candidates are those, the special ids and the rows of its
source pieces (``Shortlist.candidates``). ``Shortlisted`` runs search over those
columns alone: the output layer is cut to them once per batch, search picks among
their positions, and the chosen positions are mapped back to ids. The special ids
(PAD, UNK, BOS, EOS = 0..3) are always candidates and the candidates are sorted, so
their positions are their ids and search's rules about them hold unchanged.

Scores under a shortlist are log-probabilities normalised over the candidates. Off by
default: ``decoding.shortlist=true``. ``python -m nmt.cli shortlist checkpoint=...``
adds a table to a checkpoint trained without one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nmt.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from nmt.ensemble import Ensemble
from nmt.errors import CheckpointError, ConfigError
from nmt.search import Hypothesis

SPECIALS = EOS_ID + 1  # ids 0..EOS_ID: PAD, UNK, BOS, EOS


@dataclass(frozen=True)
class Shortlist:
    """Target ids per source id (rows padded with -1), and ids every batch keeps."""

    table: torch.Tensor  # (source vocabulary, per_source) int64
    frequent: torch.Tensor  # (F,) int64, the special ids included

    def candidates(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For a batch of source ids (B, S): the sorted target ids any of its sentences may
        produce (V',), and which of them each sentence may produce (B, V') bool."""
        src = src.to(self.table.device)
        rows = self.table[src].masked_fill((src == PAD_ID).unsqueeze(2), -1)  # (B, S, k)
        rows = rows.flatten(1)  # (B, S * k): padding has no candidates
        ids = torch.cat([self.frequent, rows[rows >= 0]]).unique()  # sorted
        allowed = torch.zeros(src.size(0), ids.numel(), dtype=torch.bool,
                              device=ids.device)
        allowed[:, torch.searchsorted(ids, self.frequent)] = True
        sentence = torch.arange(src.size(0), device=ids.device).unsqueeze(1).expand_as(rows)
        found = rows >= 0
        allowed[sentence[found], torch.searchsorted(ids, rows[found])] = True
        return ids, allowed

    def to(self, device: str | torch.device) -> Shortlist:
        return Shortlist(self.table.to(device), self.frequent.to(device))

    def state(self) -> dict[str, torch.Tensor]:
        """What the checkpoint keeps (tensors only: torch.load with weights_only reads it)."""
        return {"table": self.table, "frequent": self.frequent}

    @classmethod
    def from_state(cls, state: Any, src_vocab: int, tgt_vocab: int, where: str) -> Shortlist:
        """A checkpoint's table, checked against the model's vocabularies."""
        table = state.get("table") if isinstance(state, dict) else None
        frequent = state.get("frequent") if isinstance(state, dict) else None
        if not (isinstance(table, torch.Tensor) and isinstance(frequent, torch.Tensor)
                and table.dim() == 2 and table.size(0) == src_vocab and table.numel() > 0
                and int(table.max()) < tgt_vocab and frequent.dim() == 1
                and frequent.numel() >= SPECIALS and int(frequent.max()) < tgt_vocab
                and bool((frequent[:SPECIALS] == torch.arange(SPECIALS)).all())):
            raise CheckpointError(f"{where}: its shortlist table does not fit the model's "
                                  f"vocabularies ({src_vocab} source, {tgt_vocab} target pieces)")
        return cls(table.long(), frequent.long())


def build(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray],
          src_vocab: int, tgt_vocab: int, per_source: int = 30, frequent: int = 200
          ) -> Shortlist:
    """The table of a corpus: ``src`` and ``tgt`` are (ids, offsets) of its encoded
    sentences (sentence i: ids[offsets[i]:offsets[i + 1]], without BOS and EOS)."""
    if not isinstance(per_source, int) or isinstance(per_source, bool) or per_source < 1:
        raise ConfigError(f"shortlist.per_source must be a positive integer, got {per_source!r}")
    if not isinstance(frequent, int) or isinstance(frequent, bool) or frequent < 0:
        raise ConfigError(f"shortlist.frequent must be an integer >= 0, got {frequent!r}")
    src_sets, tgt_sets = _sentence_sets(*src), _sentence_sets(*tgt)
    if len(src_sets) != len(tgt_sets):
        raise ConfigError(f"shortlist: {len(src_sets)} source but {len(tgt_sets)} target "
                          "sentences")
    # Every (source piece, target piece) pair of every sentence pair, as one code.
    n_src = np.array([len(s) for s in src_sets], dtype=np.int64)
    n_tgt = np.array([len(t) for t in tgt_sets], dtype=np.int64)
    s_flat = np.repeat(np.concatenate(src_sets), np.repeat(n_tgt, n_src))
    t_flat = np.concatenate([np.tile(t, len(s)) for s, t in zip(src_sets, tgt_sets,
                                                                strict=True)])
    codes, pairs = np.unique(s_flat * tgt_vocab + t_flat, return_counts=True)
    s_of, t_of = codes // tgt_vocab, codes % tgt_vocab
    c_src = np.bincount(np.concatenate(src_sets), minlength=src_vocab)
    c_tgt = np.bincount(np.concatenate(tgt_sets), minlength=tgt_vocab)
    dice = 2 * pairs / (c_src[s_of] + c_tgt[t_of])
    # By source piece, then best first: the first per_source of each source piece.
    order = np.lexsort((-pairs, -dice, s_of))
    s_sorted = s_of[order]
    starts = np.searchsorted(s_sorted, np.arange(src_vocab))
    rank = np.arange(len(order)) - starts[s_sorted]
    keep = order[rank < per_source]
    table = np.full((src_vocab, per_source), -1, dtype=np.int64)
    table[s_of[keep], rank[rank < per_source]] = t_of[keep]
    counts = c_tgt.copy()  # sentences a target piece occurs in
    counts[:SPECIALS] = 0
    common = np.argsort(-counts, kind="stable")[:frequent]
    kept = np.union1d(np.arange(SPECIALS), common[counts[common] > 0])
    return Shortlist(torch.from_numpy(table), torch.from_numpy(kept.astype(np.int64)))


def _sentence_sets(ids: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """Each sentence's distinct ids."""
    ids = np.asarray(ids, dtype=np.int64)
    return [np.unique(ids[a:b]) for a, b in itertools.pairwise(offsets.tolist())]


class Shortlisted:
    """A SearchModel over the vocabulary columns ``ids`` (sorted) of ``model``: a single
    model, an ensemble (each member cut alike) or an exported model (whose whole output
    layer runs, then the columns are taken: the same result, no faster).

    ``allowed`` (B, V') restricts each sentence of the batch to its own candidates (the
    others get -inf), so that a sentence's output does not depend on the sentences it is
    batched with; None: every column for every sentence.
    """

    def __init__(self, model: Any, ids: torch.Tensor, allowed: torch.Tensor | None = None
                 ) -> None:
        self.model, self.ids = model, ids
        self.ensemble = isinstance(model, Ensemble)
        members = model.models if self.ensemble else [model]
        self.layers: list[Callable[[torch.Tensor], torch.Tensor] | None] = [
            m.output_layer(ids) if hasattr(m, "output_layer") else None for m in members]
        self.bias = None if allowed is None else torch.zeros(
            allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))

    # The encoder output carries each row's bias (B, V'), reordered with it.

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Any:
        return self.model.encode(src, src_lengths), self.bias

    def init_state(self, enc: Any) -> Any:
        return self.model.init_state(enc[0])

    def reorder_encoder(self, enc: Any, index: torch.Tensor) -> Any:
        bias = None if enc[1] is None else enc[1].index_select(0, index)
        return self.model.reorder_encoder(enc[0], index), bias

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        return self.model.reorder_state(state, index)

    def step(self, prev_tokens: torch.Tensor, state: Any, enc: Any
             ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Previous positions (B,) -> logits over the columns (B, V'), state, attention."""
        prev = self.ids[prev_tokens]
        inner, bias = enc
        if not self.ensemble:
            return self._step(self.model, self.layers[0], prev, state, inner, bias)
        return Ensemble.combine([
            self._step(m, layer, prev, s, e, bias) for m, layer, s, e in
            zip(self.model.models, self.layers, state, inner, strict=True)])

    def _step(self, member: Any, layer: Callable[[torch.Tensor], torch.Tensor] | None,
              prev: torch.Tensor, state: Any, enc: Any, bias: torch.Tensor | None
              ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        if layer is None:
            logits, state, attn = member.step(prev, state, enc)
            logits = logits.index_select(-1, self.ids)
        else:
            outputs, state, attn = member.step_outputs(prev, state, enc)
            logits = layer(outputs)
        return (logits if bias is None else logits + bias), state, attn

    def to_ids(self, hyps: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """Hypotheses with the chosen positions mapped back to vocabulary ids."""
        ids = self.ids.tolist()
        return [[h._replace(tokens=[ids[t] for t in h.tokens]) for h in hs] for hs in hyps]



def run(cfg: Any) -> dict[str, Any]:
    """``python -m nmt.cli shortlist`` (conf/shortlist.yaml): build the table of a
    checkpoint from its training corpus, with its own tokenizers, and write the
    checkpoint with it (atomically; ``output`` null: in place)."""
    from omegaconf import OmegaConf

    from nmt.checkpointing import atomic_torch_save
    from nmt.data.corpus import read_lines
    from nmt.data.prepare import DataConfig, from_dict
    from nmt.decoding import load_checkpoint

    ckpt = load_checkpoint(cfg.checkpoint)
    if not ckpt["tokenizers"].get("src"):
        raise CheckpointError(f"{cfg.checkpoint}: an image captioning model has no source "
                              "pieces to shortlist for")
    values = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(values, dict)
    data = from_dict(DataConfig, {str(k): v for k, v in values.items()}, "data")
    data.check()
    train_only = dataclasses.replace(  # the other splits need not exist
        data, splits={"train": data.splits.get("train")},
        files={"train": data.files.get("train")})
    files = train_only.resolve().get("train")
    if files is None:
        raise ConfigError("data: no train split configured")
    src, tgt = (Tokenizer(ckpt["tokenizers"][side]) for side in ("src", "tgt"))
    sources, targets = list(read_lines(files.src)), list(read_lines(files.tgt))
    table = from_lines(sources, targets, src, tgt, cfg.per_source, cfg.frequent)
    ckpt["shortlist"] = table.state()
    output = str(cfg.output or cfg.checkpoint)
    atomic_torch_save(ckpt, output)
    return {"checkpoint": str(cfg.checkpoint), "output": output, "pairs": len(sources),
            "per_source": cfg.per_source, "frequent": int(table.frequent.numel())}


def from_lines(sources: list[str], targets: list[str], src_tokenizer: Tokenizer,
               tgt_tokenizer: Tokenizer, per_source: int = 30, frequent: int = 200
               ) -> Shortlist:
    """The table of parallel lines, encoded with the model's tokenizers."""
    if len(sources) != len(targets):
        raise ConfigError(f"shortlist: {len(sources)} source but {len(targets)} target lines")
    sides = []
    for tokenizer, lines in ((src_tokenizer, sources), (tgt_tokenizer, targets)):
        encoded = tokenizer.encode(lines)
        offsets = np.cumsum([0] + [len(seq) for seq in encoded])
        sides.append((np.fromiter((i for seq in encoded for i in seq), dtype=np.int64,
                                  count=int(offsets[-1])), offsets))
    return build(sides[0], sides[1], src_tokenizer.vocab_size, tgt_tokenizer.vocab_size,
                 per_source, frequent)

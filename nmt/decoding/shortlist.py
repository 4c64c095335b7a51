"""A lexical shortlist for CPU decoding: the output layer scores only the target pieces
likely for a batch, not the whole vocabulary.

The table is made of the training corpus's co-occurrence counts (nmt/data/
cooccurrence.py: counted during preparation, cached with the encoded data), at the
start of training (``from_counts``: every checkpoint carries it as
``checkpoint["shortlist"]``): the ``frequent`` target pieces in the most sentences
(punctuation, articles, endings), which every batch keeps; and for every source piece,
the ``per_source`` other target pieces it occurs with in the most sentence pairs,
c(s, t) (the order of p(t | s); ties: the more frequent target piece, then the lower
id). A batch's candidates are those, the special ids and the rows of its source pieces
(``Shortlist.candidates``). ``Shortlisted`` runs search over those
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from nmt.core.errors import CheckpointError, ConfigError
from nmt.core.tokens import EOS_ID, PAD_ID
from nmt.data.cooccurrence import Counts, count
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.ensemble import Ensemble
from nmt.decoding.search import NEG_INF, Hypothesis

SPECIALS = EOS_ID + 1  # ids 0..EOS_ID: PAD, UNK, BOS, EOS
PER_SOURCE = 20  # target pieces a source piece adds (docs/design.md: how these were chosen)
FREQUENT = 200  # the most frequent target pieces, which every batch keeps


@dataclass(frozen=True)
class Shortlist:
    """Target ids per source id (rows padded with -1), and ids every batch keeps."""

    table: torch.Tensor  # (source vocabulary, per_source) int64
    frequent: torch.Tensor  # (F,) int64, the special ids included
    vocab_size: int  # the target vocabulary's

    def candidates(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sentence's candidates, for a batch of source ids (B, S): their ids sorted
        (the special ids first), right-padded (B, K), and which are real (B, K) bool."""
        src = src.to(self.table.device)
        rows = self.table[src].masked_fill((src == PAD_ID).unsqueeze(2), -1)  # (B, S, k)
        rows = rows.flatten(1)  # (B, S * k): padding has no candidates
        allowed = torch.zeros(src.size(0), self.vocab_size + 1, dtype=torch.bool,
                              device=src.device)  # the last column catches the -1s
        allowed[:, self.frequent] = True
        allowed.scatter_(1, rows.where(rows >= 0, self.vocab_size), True)
        sentence, ids = allowed[:, :-1].nonzero(as_tuple=True)  # by sentence, then id
        counts = torch.bincount(sentence, minlength=src.size(0))
        column = torch.arange(ids.numel(), device=ids.device) - (counts.cumsum(0) - counts)[
            sentence]
        own = torch.zeros(src.size(0), int(counts.max()), dtype=torch.long, device=ids.device)
        valid = torch.zeros(own.shape, dtype=torch.bool, device=ids.device)
        own[sentence, column], valid[sentence, column] = ids, True
        return own, valid

    def to(self, device: str | torch.device) -> Shortlist:
        return Shortlist(self.table.to(device), self.frequent.to(device), self.vocab_size)

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
        return cls(table.long(), frequent.long(), tgt_vocab)


def missing_table(where: str) -> ConfigError:
    """The error for decoding.shortlist on a model without a table (translator, server)."""
    return ConfigError(f"decoding.shortlist: {where} carries no shortlist table (exported "
                       "models have none; add one to a checkpoint with `python -m nmt.cli "
                       "shortlist checkpoint=...`)")


def build(src: tuple[np.ndarray, np.ndarray], tgt: tuple[np.ndarray, np.ndarray],
          src_vocab: int, tgt_vocab: int, per_source: int = PER_SOURCE,
          frequent: int = FREQUENT) -> Shortlist:
    """The table of a corpus: ``src`` and ``tgt`` are (ids, offsets) of its encoded
    sentences (sentence i: ids[offsets[i]:offsets[i + 1]], without BOS and EOS)."""
    n = len(src[1]) - 1
    if n != len(tgt[1]) - 1:
        raise ConfigError(f"shortlist: {n} source but {len(tgt[1]) - 1} target sentences")
    _check(per_source, frequent)
    return from_counts(count(src, tgt, src_vocab, tgt_vocab), per_source, frequent)


def _check(per_source: Any, frequent: Any) -> None:
    if not isinstance(per_source, int) or isinstance(per_source, bool) or per_source < 1:
        raise ConfigError(f"shortlist.per_source must be a positive integer, got {per_source!r}")
    if not isinstance(frequent, int) or isinstance(frequent, bool) or frequent < 0:
        raise ConfigError(f"shortlist.frequent must be an integer >= 0, got {frequent!r}")


def from_counts(counts: Counts, per_source: int = PER_SOURCE, frequent: int = FREQUENT
                ) -> Shortlist:
    """The table of a corpus's co-occurrence counts (nmt/data/cooccurrence.py)."""
    _check(per_source, frequent)
    src_vocab, tgt_vocab = len(counts.src), len(counts.tgt)
    sentences = counts.tgt.copy()  # sentences a target piece occurs in
    sentences[:SPECIALS] = 0
    common = np.argsort(-sentences, kind="stable")[:frequent]
    kept = np.union1d(np.arange(SPECIALS), common[sentences[common] > 0])
    always = np.zeros(tgt_vocab, dtype=bool)
    always[kept] = True
    s_of, t_of = counts.codes // tgt_vocab, counts.codes % tgt_vocab
    rest = ~always[t_of]  # the rows leave out what every batch keeps anyway
    s_of, t_of, pairs = s_of[rest], t_of[rest], counts.pairs[rest]
    # By source piece, then best first (lexsort's last key first): the most sentence
    # pairs together, then the more frequent target piece, then the lower id.
    order = np.lexsort((t_of, -counts.tgt[t_of], -pairs, s_of))
    s_sorted = s_of[order]
    starts = np.searchsorted(s_sorted, np.arange(src_vocab))
    rank = np.arange(len(order)) - starts[s_sorted]
    keep = order[rank < per_source]
    table = np.full((src_vocab, per_source), -1, dtype=np.int64)
    table[s_of[keep], rank[rank < per_source]] = t_of[keep]
    return Shortlist(torch.from_numpy(table), torch.from_numpy(kept.astype(np.int64)),
                     tgt_vocab)


class Columns(NamedTuple):
    """Shortlisted's encoder output: the model's, and the candidate columns of the
    sentences whose rows are live.

    The per-sentence tensors (ids, bias, each member's output rows) are kept for a set
    of sentences ``kept`` that may still hold finished ones: ``slots`` says where each
    live sentence is. They are compacted to the live sentences once fewer than half of
    them are (copying the output rows at every finished sentence would cost as much
    as the matmuls they save).
    """

    inner: Any  # the model's encoder output
    rows: torch.Tensor  # (R,) each row's sentence
    kept: torch.Tensor  # (m,) the sentences the tensors below hold, ascending
    slots: torch.Tensor  # (n,) each live sentence's place in them, ascending
    ids: torch.Tensor  # (m, K) the candidates' ids
    bias: torch.Tensor  # (m, K) 0, or -inf for padding
    weights: list[tuple[torch.Tensor, torch.Tensor | None] | None]  # per member: (m, E, K), (m, K)

    def compact(self) -> Columns:
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, self.slots)

        return self._replace(
            kept=pick(self.kept), slots=torch.arange(self.slots.numel(), device=self.slots.device),
            ids=pick(self.ids), bias=pick(self.bias),
            weights=[None if w is None else (pick(w[0]), None if w[1] is None else pick(w[1]))
                     for w in self.weights])


class Shortlisted:
    """A SearchModel that searches each sentence over its own candidate columns: ``own``
    (B, K), the ids of sentence b's candidates sorted, ``valid`` (B, K) which are real.

    Search sees positions 0..K-1; ``step`` maps the previous positions to ids, and
    ``to_ids`` the hypotheses. The special ids come first in every row, so their
    positions are their ids. The output layer's rows of each sentence's candidates are
    taken once per batch (``Seq2Seq.output_rows``), and a step multiplies each beam's
    outputs by its sentence's rows alone (one batched matmul); padding columns get -inf.
    Search keeps every sentence's rows together, W of them (the beam, or 1): groups of
    W consecutive rows. An ensemble's members are cut alike; a model without
    ``output_rows`` (an exported one) computes its full logits, then the columns are
    taken (the same result, no faster).
    """

    def __init__(self, model: Any, own: torch.Tensor, valid: torch.Tensor) -> None:
        self.model, self.own = model, own
        self.ensemble = isinstance(model, Ensemble)
        self.members = model.models if self.ensemble else [model]
        self.bias = torch.zeros(own.shape, device=own.device).masked_fill(~valid, NEG_INF)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> Columns:
        sentences = torch.arange(src.size(0), device=src.device)
        weights = [_transposed(m.output_rows(self.own)) if hasattr(m, "output_rows") else None
                   for m in self.members]
        return Columns(self.model.encode(src, src_lengths), sentences, sentences, sentences,
                       self.own, self.bias, weights)

    def init_state(self, enc: Columns) -> Any:
        return self.model.init_state(enc.inner)

    def reorder_encoder(self, enc: Columns, index: torch.Tensor) -> Columns:
        rows = enc.rows[index]
        live = torch.unique_consecutive(rows)  # search keeps a sentence's rows together
        columns = enc._replace(inner=self.model.reorder_encoder(enc.inner, index), rows=rows,
                               slots=torch.searchsorted(enc.kept, live))
        return columns.compact() if 2 * live.numel() < enc.kept.numel() else columns

    def reorder_state(self, state: Any, index: torch.Tensor) -> Any:
        return self.model.reorder_state(state, index)

    def step(self, prev_tokens: torch.Tensor, state: Any, enc: Columns
             ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Previous positions (R,) -> logits over each row's columns (R, K), state,
        attention."""
        n, kept = enc.slots.numel(), enc.kept.numel()
        width = prev_tokens.numel() // n  # rows per sentence: the beam, or 1
        every = n == kept
        ids = enc.ids if every else enc.ids.index_select(0, enc.slots)  # (n, K)
        bias = (enc.bias if every else enc.bias.index_select(0, enc.slots)).unsqueeze(1)
        row_ids = ids.repeat_interleave(width, 0)  # (R, K)
        prev = row_ids.gather(1, prev_tokens.unsqueeze(1)).squeeze(1)  # (R,)
        inner = enc.inner if self.ensemble else (enc.inner,)
        outs = []
        for member, weights, s, e in zip(self.members, enc.weights,
                                         state if self.ensemble else (state,), inner,
                                         strict=True):
            if weights is None:
                logits, s, attn = member.step(prev, s, e)
                logits = logits.gather(1, row_ids).view(n, width, -1)
            else:
                outputs, s, attn = member.step_outputs(prev, s, e)
                hidden = member.pre_logits(outputs).view(n, width, -1)  # (n, W, E)
                if not every:  # the kept sentences' rows, finished ones at zero
                    hidden = hidden.new_zeros(kept, width, hidden.size(2)).index_copy_(
                        0, enc.slots, hidden)
                logits = torch.bmm(hidden, weights[0])  # (., W, K)
                if weights[1] is not None:
                    logits = logits + weights[1].unsqueeze(1)
                if not every:
                    logits = logits.index_select(0, enc.slots)  # (n, W, K)
            outs.append(((logits + bias).view(n * width, -1), s, attn))
        if not self.ensemble:
            return outs[0]
        return Ensemble.combine(outs)

    def to_ids(self, hyps: list[list[Hypothesis]]) -> list[list[Hypothesis]]:
        """Hypotheses with the chosen positions mapped back to vocabulary ids."""
        own = self.own.tolist()
        return [[h._replace(tokens=[own[i][t] for t in h.tokens]) for h in hs]
                for i, hs in enumerate(hyps)]


def _transposed(rows: tuple[torch.Tensor, torch.Tensor | None]
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output rows (B, K, E) as (B, E, K), contiguous: the batched matmul of every step
    runs about a third faster on them than on the transposed view (measured on a CPU)."""
    return rows[0].transpose(1, 2).contiguous(), rows[1]


def run(cfg: Any) -> dict[str, Any]:
    """``python -m nmt.cli shortlist`` (conf/shortlist.yaml): build the table of a
    checkpoint from its training corpora, encoded with its own tokenizers and filtered
    as in preparation, and write the checkpoint with it (atomically; ``output`` null:
    in place)."""
    import tempfile

    from omegaconf import OmegaConf

    from nmt.data.cooccurrence import count_split
    from nmt.data.encode import encode_split
    from nmt.data.prepare import DataConfig, from_dict
    from nmt.data.workers import all_cores
    from nmt.decoding.checkpoints import atomic_torch_save, load_checkpoint

    ckpt = load_checkpoint(cfg.checkpoint)
    if not ckpt["tokenizers"].get("src"):
        raise CheckpointError(f"{cfg.checkpoint}: an image captioning model has no source "
                              "pieces to shortlist for")
    values = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(values, dict)
    data = from_dict(DataConfig, {str(k): v for k, v in values.items()}, "data")
    data.check()
    if data.files.get("train") is None and data.splits.get("train") is None:
        raise ConfigError("data: no train split configured")
    train_only = dataclasses.replace(  # the other splits need not exist
        data, splits={"train": data.splits.get("train")},
        files={"train": data.files.get("train")})
    src, tgt = (Tokenizer(ckpt["tokenizers"][side]) for side in ("src", "tgt"))
    counts, workers, pairs = Counts.empty(src.vocab_size, tgt.vocab_size), all_cores(), 0
    with tempfile.TemporaryDirectory(prefix="nmt-shortlist-") as tmp:
        for k, (_, files) in enumerate(train_only.training_corpora()):
            out = Path(tmp) / str(k) / "train"
            encode_split(files, src, tgt, out, data.clean_config(), data.workers or workers,
                         (data.src_lang, data.tgt_lang))
            part, _ = count_split(out, src.vocab_size, tgt.vocab_size, data.workers or workers)
            counts, pairs = counts.add(part), pairs + part.sentences
    table = from_counts(counts, cfg.per_source, cfg.frequent)
    ckpt["shortlist"] = table.state()
    output = str(cfg.output or cfg.checkpoint)
    atomic_torch_save(ckpt, output)
    return {"checkpoint": str(cfg.checkpoint), "output": output, "pairs": pairs,
            "per_source": cfg.per_source, "frequent": int(table.frequent.numel())}


def from_lines(sources: list[str], targets: list[str], src_tokenizer: Tokenizer,
               tgt_tokenizer: Tokenizer, per_source: int = PER_SOURCE,
               frequent: int = FREQUENT) -> Shortlist:
    """The table of parallel lines, encoded with the model's tokenizers."""
    sides = []  # build() refuses sides of different lengths
    for tokenizer, lines in ((src_tokenizer, sources), (tgt_tokenizer, targets)):
        encoded = tokenizer.encode(lines)
        offsets = np.cumsum([0] + [len(seq) for seq in encoded])
        sides.append((np.fromiter((i for seq in encoded for i in seq), dtype=np.int64,
                                  count=int(offsets[-1])), offsets))
    return build(sides[0], sides[1], src_tokenizer.vocab_size, tgt_tokenizer.vocab_size,
                 per_source, frequent)

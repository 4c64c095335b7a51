"""The lexical shortlist (nmt/decoding/shortlist.py): the table built from co-occurrence counts, a
batch's candidates, search over the candidate columns (against search over the full
vocabulary with every other column masked), checkpoints and the command that adds a
table to one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import toy_pairs
from test_ensemble import sources, tiny_model
from test_translate import checkpoint, translator  # noqa: F401  (module fixtures)
from train_helpers import ROOT

from nmt.core.errors import CheckpointError, ConfigError
from nmt.data import cooccurrence
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import decode
from nmt.decoding.ensemble import Ensemble
from nmt.decoding.options import Decoding
from nmt.decoding.shortlist import SPECIALS, Shortlist, Shortlisted, build
from nmt.inference.translator import Translator, pad_sources

pytestmark = pytest.mark.usefixtures("one_thread")


def corpus(pairs: list[tuple[list[int], list[int]]]) -> tuple[tuple[np.ndarray, np.ndarray],
                                                              tuple[np.ndarray, np.ndarray]]:
    def side(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.cumsum([0] + [len(s) for s in seqs])
        return np.array([i for s in seqs for i in s], dtype=np.int64), offsets

    return side([s for s, _ in pairs]), side([t for _, t in pairs])


def test_the_table_holds_each_source_piece_s_most_associated_target_pieces():
    # 10 always comes with 20, 11 with 21; 30 is in every target sentence (frequent).
    pairs = [([10, 5], [20, 30]), ([10, 6], [20, 30, 22]), ([11, 5], [21, 30]),
             ([11, 10], [21, 20, 30]), ([12], [30])]
    src, tgt = corpus(pairs)
    table = build(src, tgt, src_vocab=16, tgt_vocab=40, per_source=2, frequent=1)
    assert table.table.shape == (16, 2)
    assert table.table[10, 0] == 20 and table.table[11, 0] == 21
    assert table.table[10].tolist() == [20, 21]  # 21 and 22 once each with 10; 21 more often
    assert table.table[12].tolist() == [-1, -1]  # only 30 came with 12: every batch keeps it
    assert (table.table[13] == -1).all()  # never seen
    assert table.frequent.tolist() == [*range(SPECIALS), 30]
    # A batch's candidates: sorted, the specials, the frequent pieces, its sources' rows;
    # each sentence its own: the first has rows 10 and 12, the second none (13 unseen).
    src_batch = torch.tensor([[10, 12, 3], [13, 3, 0]])
    own, valid = table.candidates(src_batch)
    first = {0, 1, 2, 3, 30, *table.table[10].tolist(), *table.table[12].tolist()} - {-1}
    assert own[0][valid[0]].tolist() == sorted(first)
    assert own[1][valid[1]].tolist() == [0, 1, 2, 3, 30]
    assert own.shape == (2, len(first)) and valid.sum(1).tolist() == [len(first), 5]


def test_counting_in_chunks_gives_the_table_of_one_count(monkeypatch):
    # The counts are merged chunk by chunk (bounded memory on any corpus): the table must
    # not depend on where the chunks end, down to one sentence pair a chunk.
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(4, 60, rng.integers(0, 9)).tolist(),
              rng.integers(4, 50, rng.integers(0, 9)).tolist()) for _ in range(400)]
    src, tgt = corpus(pairs)
    src = (src[0].astype(np.uint16), src[1])  # the dtype prepared corpora store
    whole = build(src, tgt, 60, 50, per_source=4, frequent=5)
    assert (whole.table >= 0).sum() > 150  # most source pieces have candidates
    for chunk in (1, 7, 500):
        monkeypatch.setattr(cooccurrence, "CHUNK", chunk)
        table = build(src, tgt, 60, 50, per_source=4, frequent=5)
        assert torch.equal(table.table, whole.table) and torch.equal(table.frequent,
                                                                     whole.frequent)
    # By hand for one piece: 59's row holds the target pieces it shares the most pairs
    # with (ties: the more frequent piece, then the lower id), leaving out the pieces
    # every batch keeps (the special ids and the 5 most frequent).
    in_pairs = Counter(t for _, t_ids in pairs for t in set(t_ids))
    frequent = sorted(in_pairs, key=lambda t: (-in_pairs[t], t))[:5]
    assert whole.frequent.tolist() == sorted([0, 1, 2, 3, *frequent])
    together = Counter(t for s, t_ids in pairs if 59 in s for t in set(t_ids)
                       if t not in frequent)
    best = sorted(together, key=lambda t: (-together[t], -in_pairs[t], t))[:4]
    assert whole.table[59].tolist() == best


def test_an_empty_corpus_gives_an_empty_table():
    empty = (np.empty(0, dtype=np.uint16), np.zeros(1, dtype=np.int64))
    table = build(empty, empty, 8, 8)
    assert (table.table == -1).all() and table.frequent.tolist() == list(range(SPECIALS))


def test_bad_settings_and_tables_are_refused():
    src, tgt = corpus([([4], [5])])
    with pytest.raises(ConfigError, match="per_source"):
        build(src, tgt, 8, 8, per_source=0)
    good = build(src, tgt, 8, 8).state()
    assert Shortlist.from_state(good, 8, 8, "x.ckpt").table.shape[0] == 8
    for state, src_vocab, tgt_vocab in [(good, 9, 8), (good, 8, 5), ({"table": 1}, 8, 8),
                                        (None, 8, 8)]:
        with pytest.raises(CheckpointError, match=r"x\.ckpt: its shortlist table"):
            Shortlist.from_state(state, src_vocab, tgt_vocab, "x.ckpt")


class Masked:
    """A model whose logits outside ``ids`` are -inf: the full-vocabulary equivalent of
    searching the columns ``ids`` alone."""

    def __init__(self, model, ids: torch.Tensor) -> None:
        self.model, self.ids = model, ids

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def step(self, prev, state, enc):
        logits, state, attn = self.model.step(prev, state, enc)
        masked = torch.full_like(logits, float("-inf"))
        masked[:, self.ids] = logits[:, self.ids]
        return masked, state, attn


def random_shortlist(seed: int) -> Shortlist:
    g = torch.Generator().manual_seed(seed)
    return Shortlist(torch.randint(-1, 20, (20, 3), generator=g), torch.tensor([0, 1, 2, 3, 7]),
                     20)


@pytest.mark.parametrize("decoding", [Decoding(beam_size=1), Decoding(beam_size=4, n_best=3),
                                      Decoding(beam_size=3, alpha=1.0, min_len=2)])
@pytest.mark.parametrize("members", [1, 2])
def test_each_sentence_is_searched_over_its_own_candidates(decoding, members):
    """A batch's outputs equal each sentence decoded alone by the full model with every
    column outside its candidates at -inf (greedy, beam, n-best, min_len; an ensemble)."""
    model = tiny_model(0) if members == 1 else Ensemble([tiny_model(0), tiny_model(1)])
    batch = sources(3)
    table = random_shortlist(0)
    own, valid = table.candidates(batch.src)
    assert len({tuple(row[ok].tolist()) for row, ok in zip(own, valid, strict=True)}) > 1
    cut = Shortlisted(model, own, valid)
    got = cut.to_ids(decode(cut, batch, decoding, return_attention=True))
    for i, hyps in enumerate(got):
        one = type(batch)(batch.src[i:i + 1, : int(batch.src_lengths[i])],
                          batch.src_lengths[i:i + 1])
        [want] = decode(Masked(model, own[i][valid[i]]), one, decoding, return_attention=True)
        assert [h.tokens for h in hyps] == [h.tokens for h in want]
        assert all(set(h.tokens) <= set(own[i][valid[i]].tolist()) for h in hyps)
        assert [h.score for h in hyps] == pytest.approx([h.score for h in want], abs=1e-5)
        assert all(torch.allclose(a.attention, b.attention, atol=1e-6)
                   for a, b in zip(hyps, want, strict=True))


@pytest.mark.parametrize("decoding", [Decoding(beam_size=1), Decoding(beam_size=4, n_best=2)])
def test_every_column_a_candidate_is_the_model_itself(decoding):
    model, batch = tiny_model(0), sources()
    every = torch.arange(20).expand(batch.src.size(0), 20)
    cut = Shortlisted(model, every, torch.ones(every.shape, dtype=torch.bool))
    got, want = cut.to_ids(decode(cut, batch, decoding)), decode(model, batch, decoding)
    for g, w in zip(got, want, strict=True):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-5)


def test_an_exported_style_model_without_output_rows_gets_the_same_result():
    """A model without step_outputs/output_rows (an ONNX export): the full logits, then
    each row's columns."""
    model = tiny_model(2)
    plain = SimpleNamespace(**{n: getattr(model, n) for n in (
        "encode", "init_state", "step", "reorder_encoder", "reorder_state")})
    own, valid = random_shortlist(1).candidates(sources(1).src)
    a, b = Shortlisted(model, own, valid), Shortlisted(plain, own, valid)
    decoding = Decoding(beam_size=3, n_best=2)
    got, want = decode(b, sources(1), decoding), decode(a, sources(1), decoding)
    for g, w in zip(got, want, strict=True):
        assert [h.tokens for h in g] == [h.tokens for h in w]
        assert [h.score for h in g] == pytest.approx([h.score for h in w], abs=1e-5)


# --- checkpoints, the translator and the command ---------------------------------------------


def toy_data(toy_dir: Path) -> list[str]:
    """The toy corpus as data=files overrides (the command reads its train split only)."""
    return ["data=files", "data.name=toy", "data.src_lang=en", "data.tgt_lang=de",
            f"data.files.train.src={toy_dir / 'train.en.gz'}",
            f"data.files.train.tgt={toy_dir / 'train.de.gz'}"]


def test_training_writes_the_table_and_the_translator_uses_it(checkpoint, translator):  # noqa: F811
    ckpt = load_checkpoint(checkpoint)  # trained with per_source=4, frequent=8
    assert ckpt["shortlist"]["table"].shape == (translator.src_tokenizer.vocab_size, 4)
    assert translator.shortlist is not None
    sentences = [s for s, _ in toy_pairs(16, seed=3)]  # short: one batch
    decoding = Decoding(beam_size=4, n_best=2, shortlist=True)
    together = translator.translate(sentences, decoding)
    src, _ = pad_sources(translator.src_tokenizer.encode(sentences), translator.device)
    _, valid = translator.shortlist.candidates(src)
    assert int(valid.sum(1).max()) < translator.tgt_tokenizer.vocab_size
    # A line gets the same translation in a batch as alone (its own candidates).
    for sentence, t in zip(sentences, together, strict=True):
        [alone] = translator.translate([sentence], decoding)
        assert alone.texts == t.texts
        assert [h.score for h in alone.hypotheses] == pytest.approx(
            [h.score for h in t.hypotheses], abs=1e-5)


def test_a_checkpoint_without_a_table_says_how_to_add_one(checkpoint, toy_dir, tmp_path):  # noqa: F811
    bare = load_checkpoint(checkpoint)
    del bare["shortlist"]
    path = tmp_path / "bare.ckpt"
    torch.save(bare, path)
    plain = Translator.from_checkpoint(path)
    assert plain.shortlist is None
    with pytest.raises(ConfigError, match=r"bare\.ckpt carries no shortlist table.*nmt\.cli "
                                          r"shortlist"):
        plain.translate(["a b c"], Decoding(shortlist=True))
    # The command adds one from the training corpus, with the checkpoint's tokenizers.
    out = tmp_path / "with.ckpt"
    result = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "shortlist", f"checkpoint={path}", f"output={out}",
         *toy_data(toy_dir), "per_source=5"], cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["per_source"] == 5 and summary["pairs"] > 0
    assert "shortlist" not in load_checkpoint(path)  # the input is left alone
    assert Translator.from_checkpoint(out).shortlist.table.shape[1] == 5
    missing = subprocess.run([sys.executable, "-m", "nmt.cli", "shortlist",
                              f"checkpoint={tmp_path / 'nope.ckpt'}"], cwd=ROOT, text=True,
                             capture_output=True, timeout=300)
    assert missing.returncode == 2 and "checkpoint not found" in missing.stderr
    assert "Traceback" not in missing.stderr


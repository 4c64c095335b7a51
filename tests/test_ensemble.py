"""Ensembles and scoring: search over the mean of members' log-probabilities (against brute
force on tables), the ensemble of one, checkpoints that cannot be ensembled, and
translate.py mode=score (the score of the beam's own output is the beam's score)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import files_config, toy_pairs
from test_search import TableModel, brute_force, random_table, table_batch
from test_translate import run_cli
from torch import nn
from train_helpers import compose_train, toy_overrides

from nmt.core.errors import CheckpointError
from nmt.core.tokens import BOS_ID
from nmt.data.tokenizer import TokenizerConfig, train_sentencepiece
from nmt.decoding.beam import beam_search
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.ensemble import Ensemble
from nmt.decoding.options import Decoding
from nmt.decoding.search import greedy_search, score_targets
from nmt.inference.translator import Translator, pad_sources
from nmt.model import build_model, model_from_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = [s for s, _ in toy_pairs(12, seed=7)]


class TableModule(nn.Module):
    """A TableModel as an nn.Module (ensemble members are modules)."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = TableModel(table)

    def __getattr__(self, name: str):
        if name in ("encode", "init_state", "step", "reorder_encoder", "reorder_state"):
            return getattr(self.table, name)
        return super().__getattr__(name)


# -- search over tables -------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("n_best", [1, 5])
def test_ensemble_beam_equals_brute_force_over_mean_log_probs(alpha, n_best):
    a, b, c = (random_table(3, 4, seed=s) for s in (1, 2, 3))
    ensemble = Ensemble([TableModule(t) for t in (a, b, c)])
    # The ensemble's distribution: the normalised mean of the members' log-probabilities.
    mean = TableModel(F.log_softmax((a + b + c) / 3, dim=-1))
    src, lengths = table_batch([0, 1, 2], [3, 3, 3])
    decoding = Decoding(beam_size=36, alpha=alpha, max_len_a=0, max_len_b=4, n_best=n_best)
    for which, hyps in enumerate(beam_search(ensemble, src, lengths, decoding)):
        expected = brute_force(mean, which, 4, 0, alpha)[:n_best]
        assert [tuple(h.tokens) for h in hyps] == [t for _, t in expected]
        assert [h.score for h in hyps] == pytest.approx([s for s, _ in expected], abs=1e-5)
    # Greedy and the beam agree with the single table model of the mean, too.
    greedy = greedy_search(ensemble, src, lengths, Decoding(max_len_a=0, max_len_b=4))
    assert greedy == greedy_search(mean, src, lengths, Decoding(max_len_a=0, max_len_b=4))


def test_ensemble_of_one_table_is_the_model():
    model = TableModule(random_table(3, 4, seed=5))
    src, lengths = table_batch([0, 1, 2], [3, 3, 3])
    decoding = Decoding(beam_size=4, n_best=3, max_len_a=0, max_len_b=4)
    assert beam_search(Ensemble([model]), src, lengths, decoding) == beam_search(
        model, src, lengths, decoding)


# -- real models ----------------------------------------------------------------------------


def tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model({"emb_size": 16, "encoder_hidden": 16, "decoder_hidden": 16,
                        "dropout": 0.0}, 20, 20).eval()


def sources(seed: int = 0) -> SourceBatch:
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(4, 20, (n,), generator=g).tolist() for n in (5, 2, 7, 4)]
    return SourceBatch(*pad_sources(ids, torch.device("cpu")))


@pytest.mark.parametrize("decoding", [Decoding(beam_size=1), Decoding(beam_size=4, n_best=2),
                                      Decoding(sampling=True, seed=3)])
def test_ensemble_of_one_is_byte_identical(decoding):
    model, batch = tiny_model(0), sources()
    gen = (lambda: torch.Generator().manual_seed(7)) if decoding.sampling else (lambda: None)
    alone = decode(model, batch, decoding, return_attention=True, generator=gen())
    ensembled = decode(Ensemble([model]), batch, decoding, return_attention=True,
                       generator=gen())
    for a, b in zip(alone, ensembled, strict=True):
        assert [(h.tokens, h.score) for h in a] == [(h.tokens, h.score) for h in b]
        assert all(torch.equal(x.attention, y.attention) for x, y in zip(a, b, strict=True))


def test_scores_of_given_targets_equal_the_search_scores():
    # For the beam's own outputs, teacher-forced scoring gives back the beam's sums: for
    # one model and for an ensemble of two different ones.
    batch = sources(1)
    for model in (tiny_model(0), Ensemble([tiny_model(0), tiny_model(1)])):
        decoding = Decoding(beam_size=3, n_best=3, alpha=0.0)
        hyps = [h for hs in decode(model, batch, decoding) for h in hs]
        rows = torch.arange(batch.src.size(0)).repeat_interleave(3)
        targets, _ = pad_sources([h.tokens for h in hyps], torch.device("cpu"))
        scores = score_targets(model, batch.src[rows], batch.src_lengths[rows], targets)
        assert scores.tolist() == pytest.approx([h.score for h in hyps], abs=1e-4)


# -- checkpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(toy_dir, tmp_path_factory) -> list[Path]:
    """A tiny trained model, and a second one with the same vocabulary: its weights moved."""
    from nmt.training.train import train

    tmp = tmp_path_factory.mktemp("trained")
    train(compose_train([*toy_overrides(files_config(toy_dir, tmp / "cache"), tmp / "run"),
                         "trainer.max_epochs=4", "test_after_training=false", "optim.lr=0.01"]))
    first = tmp / "run" / "checkpoints" / "last.ckpt"
    ckpt = load_checkpoint(first)
    g = torch.Generator().manual_seed(0)
    ckpt["state_dict"] = {k: v + 0.05 * torch.randn(v.shape, generator=g)
                          if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp / "second.ckpt")
    return [first, tmp / "second.ckpt"]


def test_translator_ensemble_of_one_and_of_two(checkpoints):
    first, second = checkpoints
    decoding = Decoding(beam_size=3, n_best=2)
    single = Translator.from_checkpoint(first).translate(SENTENCES, decoding)
    listed = Translator.from_checkpoint([first]).translate(SENTENCES, decoding)
    assert [(t.texts, [h.score for h in t.hypotheses]) for t in single] == [
        (t.texts, [h.score for h in t.hypotheses]) for t in listed]
    # Two copies of one model: the same distribution, so the same translations.
    twice = Translator.from_checkpoint([first, first]).translate(SENTENCES, decoding)
    assert [t.texts for t in twice] == [t.texts for t in single]
    pair = Translator.from_checkpoint([first, second])
    assert isinstance(pair.model, Ensemble) and len(pair.model) == 2
    assert len(pair.translate(SENTENCES, decoding)) == len(SENTENCES)


def step_outputs(model: nn.Module, src: torch.Tensor, src_lengths: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
    """(B, T, V): what ``model.step`` gives at every position of ``targets``, teacher-forced."""
    enc = model.encode(src, src_lengths)
    state, prev, out = model.init_state(enc), torch.full((src.size(0),), BOS_ID), []
    for t in range(targets.size(1)):
        logits, state, _ = model.step(prev, state, enc)
        out.append(logits)
        prev = targets[:, t]
    return torch.stack(out, dim=1)


def test_ensemble_of_two_checkpoints_gives_the_mean_of_their_log_probs(checkpoints):
    pair = Translator.from_checkpoint(checkpoints)
    src, src_lengths = pad_sources(pair.src_tokenizer.encode(SENTENCES), torch.device("cpu"))
    references = [de for _, de in toy_pairs(12, seed=7)]
    targets, _ = pad_sources(pair.tgt_tokenizer.encode(references), torch.device("cpu"))
    with torch.no_grad():
        ensembled = step_outputs(pair.model, src, src_lengths, targets)
        # Each member on its own, loaded from its own file.
        alone = [F.log_softmax(step_outputs(model_from_checkpoint(load_checkpoint(p)).eval(),
                                            src, src_lengths, targets), dim=-1)
                 for p in checkpoints]
    torch.testing.assert_close(ensembled, (alone[0] + alone[1]) / 2, atol=1e-5, rtol=1e-5)
    for member in alone:
        assert (ensembled - member).abs().max() > 1e-2  # neither member stands for both


def test_members_must_share_the_vocabularies(checkpoints, tmp_path):
    first, _ = checkpoints
    ckpt = load_checkpoint(first)
    other = train_sentencepiece((s for pair in toy_pairs(200, seed=3) for s in pair),
                                TokenizerConfig(vocab_size=40))
    ckpt["tokenizers"] = {**ckpt["tokenizers"], "tgt": other.model_proto}
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="different target vocabularies") as e:
        Translator.from_checkpoint([first, tmp_path / "other.ckpt"])
    assert "\n" not in str(e.value) and "other.ckpt" in str(e.value)


def test_score_mode_equals_the_beam_scores(checkpoints, tmp_path):
    # The score of the beam's output is the beam's score, where the output's text encodes
    # to the pieces the beam chose (a beam may pick a segmentation SentencePiece would not).
    first, second = checkpoints
    src, hyp, scores = tmp_path / "src.txt", tmp_path / "hyp.txt", tmp_path / "scores.txt"
    src.write_text("\n".join(SENTENCES) + "\n")
    for members in ([first], [first, second]):
        translator = Translator.from_checkpoint(members)
        best = [t.hypotheses[0] for t in translator.translate(SENTENCES, Decoding(alpha=0.6))]
        hyp.write_text("".join(h.text + "\n" for h in best))
        ckpt = f"[{','.join(map(str, members))}]"
        result = run_cli("translate.py", "mode=score", f"checkpoint={ckpt}", f"input={src}",
                         f"reference={hyp}", f"output={scores}", "decoding.alpha=0.6",
                         "progress=false", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = [line.split("\t") for line in scores.read_text().splitlines()]
        assert len(rows) == len(SENTENCES)
        pieces = translator.tgt_tokenizer.encode([h.text for h in best])
        assert [int(r[2]) for r in rows] == [len(ids) + 1 for ids in pieces]
        same = [i for i, h in enumerate(best) if h.tokens == pieces[i]]
        assert len(same) >= len(SENTENCES) // 2
        assert [float(rows[i][1]) for i in same] == pytest.approx(
            [best[i].score for i in same], abs=2e-4)
        assert all(float(r[0]) <= float(r[1]) <= 0 for r in rows)  # penalty >= 1 at alpha 0.6


def test_score_mode_errors(checkpoints, tmp_path):
    first, _ = checkpoints
    src, ref = tmp_path / "src.txt", tmp_path / "ref.txt"
    src.write_text("a man sees a ball\nthe dog\n")
    ref.write_text("ein mann sieht einen ball\n")
    out = tmp_path / "scores.txt"
    for args, message in (
            ([f"reference={ref}"], "src.txt has 2 lines but"),
            ([], "mode=score needs one reference file per input"),
            ([f"reference={tmp_path / 'none.txt'}"], "none.txt: input file not found")):
        result = run_cli("translate.py", "mode=score", f"checkpoint={first}", f"input={src}",
                         f"output={out}", "progress=false", *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and not out.exists()


def test_evaluate_an_ensemble(checkpoints, toy_dir, tmp_path):
    first, second = checkpoints
    result = run_cli("evaluate.py", f"checkpoint=[{first},{second}]", "ensemble=true",
                     f"src={toy_dir / 'test.en'}", f"ref={toy_dir / 'test.de'}",
                     f"output_dir={tmp_path / 'eval'}", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert entry["checkpoint"] == f"{first}+{second}" and entry["sentences"] == 30
    assert Path(entry["hypotheses"]).name == "last_second.test.hyp"

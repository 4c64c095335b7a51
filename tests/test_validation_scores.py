"""The validation scores that pick best-*.ckpt, recomputed apart: sacrebleu over the
hypotheses each validation decoded and the raw reference lines of the dev set."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from conftest import files_config
from sacrebleu.metrics import BLEU
from train_helpers import compose_train, toy_overrides

from nmt.decoding.options import Decoding
from nmt.inference.translator import Translator
from nmt.training.loggers import read_rows
from nmt.training.module import TranslationModule
from nmt.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

Hypotheses = dict[int, dict[int, list[int]]]  # global step -> {dev line: token ids}


@pytest.fixture
def decoded(monkeypatch) -> Hypotheses:
    """The token ids that every validation (not the sanity check) decodes, as
    validation_step gets them from best_token_ids, by global step and dev line."""
    seen: Hypotheses = defaultdict(dict)
    original = TranslationModule.best_token_ids

    def recording(module, batch, **settings):
        ids = original(module, batch, **settings)
        if not module.trainer.sanity_checking:
            seen[module.trainer.global_step].update(
                zip(batch.indices.tolist(), ids, strict=True))
        return ids

    monkeypatch.setattr(TranslationModule, "best_token_ids", recording)
    return seen


def train_briefly(toy_dir: Path, run: Path, *more: str) -> list[float]:
    """70 steps (3 validations, one an epoch); the val/bleu of each, from metrics.csv."""
    train(compose_train([*toy_overrides(files_config(toy_dir, run.parent / "cache"), run),
                         "trainer.max_steps=70", "optim.lr=0.02", "test_after_training=false",
                         *more]))
    rows = read_rows(run / "logs" / "metrics.csv")
    return [float(r["val/bleu"]) for r in rows if r.get("val/bleu")]


def sacrebleu_of(ids: dict[int, list[int]], references: list[str], proto: bytes) -> float:
    """BLEU of the decoded lines only, against their own reference lines."""
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto)
    lines = sorted(ids)
    hyps = [sp.decode(ids[i]) for i in lines]
    return BLEU().corpus_score(hyps, [[references[i] for i in lines]]).score


def test_logged_val_bleu_is_sacrebleu_of_the_dev_hypotheses(toy_dir, tmp_path, decoded):
    run = tmp_path / "run"
    logged = train_briefly(toy_dir, run)
    references = (toy_dir / "valid.de").read_text().split("\n")[:-1]  # line 5 is empty
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    ckpt = torch.load(best, weights_only=True)
    proto = ckpt["tokenizers"]["tgt"]
    assert len(decoded) == len(logged) == 3
    recomputed = {step: sacrebleu_of(ids, references, proto) for step, ids in decoded.items()}
    assert all(sorted(ids) == list(range(40)) for ids in decoded.values())
    assert logged == pytest.approx(list(recomputed.values()), abs=1e-3)
    assert max(recomputed.values()) > 5  # a score that wrong hypotheses would change
    # best-*.ckpt is the checkpoint of the best validation, and translate.py's code decodes
    # what it decoded, the empty source line (line 5) as an empty line included.
    step = max(recomputed, key=recomputed.__getitem__)
    assert ckpt["global_step"] == step
    sources = (toy_dir / "valid.en").read_text().split("\n")[:-1]
    again = Translator.from_checkpoint(best).translate(sources, Decoding(beam_size=1))
    assert sources[5] == "" and decoded[step][5] == []
    assert [list(t.hypotheses[0].tokens) if t.hypotheses else [] for t in again] == [
        ids for _, ids in sorted(decoded[step].items())]


def test_partial_validation_scores_the_decoded_sentences_only(toy_dir, tmp_path, decoded):
    run = tmp_path / "run"
    logged = train_briefly(toy_dir, run, "+trainer.limit_val_batches=1",
                           "batching.eval_max_tokens=300")
    references = (toy_dir / "valid.de").read_text().split("\n")[:-1]
    proto = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["tokenizers"]["tgt"]
    assert len(decoded) == len(logged) == 3
    lines = sorted(next(iter(decoded.values())))
    # One batch of the dev set sorted by length: not its first lines.
    assert 0 < len(lines) < 40 and lines != list(range(len(lines)))
    assert all(sorted(ids) == lines for ids in decoded.values())
    recomputed = [sacrebleu_of(ids, references, proto) for ids in decoded.values()]
    assert logged == pytest.approx(recomputed, abs=1e-3)
    assert max(recomputed) > 5

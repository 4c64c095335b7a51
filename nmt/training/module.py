"""The LightningModule: training and validation steps, validation BLEU, checkpoint contents.

It takes plain hyperparameters and builds its own network, so a checkpoint loads
with no Hydra and no config file beside it; the SentencePiece models travel in
the checkpoint too (``checkpoint["tokenizers"]``). The loss is in nmt.training.loss, the
optimizer and scheduler come from the config through nmt.training.optim, and throughput is
logged by nmt.training.callbacks.Throughput.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from nmt.core.errors import ConfigError
from nmt.core.metrics import Scoring, corpus_scores
from nmt.core.tokens import PAD_ID
from nmt.data.dataset import Batch
from nmt.data.tokenizer import Tokenizer
from nmt.decoding.dispatch import decode
from nmt.decoding.options import Decoding
from nmt.model.registry import build_model, model_record, upgrade_checkpoint
from nmt.training.loss import attention_coverage_penalty, check_label_smoothing, label_smoothed_nll
from nmt.training.optim import build_optimizer

log = logging.getLogger(__name__)

EVAL_METRICS = ("bleu", "chrf", "bleu_lc")  # scored at every validation and test


class TranslationModule(L.LightningModule):
    """Seq2seq training with label-smoothed cross-entropy and validation BLEU/chrF."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, model: dict[str, Any],
                 optim: dict[str, Any], label_smoothing: float = 0.1,
                 validation: dict[str, Any] | None = None,
                 test_decoding: dict[str, Any] | None = None,
                 doubly_stochastic: float = 0.0, *,
                 references: Callable[[str], list[Any]] | None = None,
                 scorer: Scorer | None = None) -> None:
        """``optim`` is checked by nmt.training.optim.check_optim (train does it before
        any data); ``references(split)`` gives what validation and test outputs are scored
        against (none: no scores): one reference translation per sentence, or a list of
        captions per image, as ``scorer(hypotheses, references)`` (default: BLEU, chrF
        and lowercased BLEU of translations) expects. ``doubly_stochastic`` is the weight
        of Xu et al.'s attention regulariser (nmt.training.loss.attention_coverage_penalty)."""
        super().__init__()
        check_label_smoothing(label_smoothing)
        if doubly_stochastic < 0:
            raise ConfigError(f"loss.doubly_stochastic must be >= 0, got {doubly_stochastic}")
        # Every decoding setting spelled out, so that the checkpoint records them all.
        validation = dataclasses.asdict(Decoding.from_dict(validation, "validation",
                                                           beam_size=1))
        test_decoding = dataclasses.asdict(Decoding.from_dict(test_decoding or validation,
                                                              "test_decoding"))
        # Methods of the data and the task, not settings.
        self.save_hyperparameters(ignore=["references", "scorer"])
        try:
            self.model = build_model(model, src_vocab_size, tgt_vocab_size, PAD_ID)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None
        self.references = references
        self.scorer: Scorer = scorer or translation_scores
        self.src_spm: bytes | None = None
        self.tgt_spm: bytes | None = None
        self.shortlist: dict[str, torch.Tensor] | None = None  # nmt/decoding/shortlist.py's table
        self.languages: dict[str, str] | None = None  # {"src": tag, "tgt": tag} of the data
        self._val_outputs: list[tuple[list[int], list[list[int]]]] = []
        self._val_sums = torch.zeros(3)  # loss, nll, tokens
        self._partial_noted = False
        self.monitor = ("val/bleu", "max")  # what the plateau scheduler follows (set by train)

    # -- tokenizers in the checkpoint ----------------------------------------------------

    def set_tokenizers(self, src: Tokenizer | None, tgt: Tokenizer) -> None:
        """The SentencePiece models the checkpoint carries; captioning has no source one."""
        self.src_spm = src.model_proto if src is not None else None
        self.tgt_spm = tgt.model_proto

    @property
    def tgt_tokenizer(self) -> Tokenizer:
        if self.tgt_spm is None:
            raise RuntimeError("no tokenizers: call set_tokenizers first")
        return _tokenizer(self.tgt_spm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizers"] = {"src": self.src_spm, "tgt": self.tgt_spm}
        if self.shortlist is not None:
            checkpoint["shortlist"] = self.shortlist
        if self.languages is not None:  # how evaluate.py scores it (nmt/core/metrics.py)
            checkpoint["languages"] = self.languages
        checkpoint["model_record"] = model_record(self.model)  # rebuilt with no config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint, self.model)  # one from before model records: resumable
        tokenizers = checkpoint.get("tokenizers") or {}
        self.src_spm, self.tgt_spm = tokenizers.get("src"), tokenizers.get("tgt")
        self.shortlist = checkpoint.get("shortlist")
        self.languages = checkpoint.get("languages")

    # -- training ------------------------------------------------------------------------

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.src, batch.src_lengths, batch.tgt_in, batch.src_index)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        weight = self.hparams.get("doubly_stochastic", 0.0)
        if weight:
            logits, attn = self.model.forward_with_attention(batch.src, batch.src_lengths,
                                                             batch.tgt_in, batch.src_index)
        else:
            logits, attn = self(batch), None
        loss, nll, n_tokens = label_smoothed_nll(logits, batch.tgt_out,
                                                 self.hparams["label_smoothing"])
        n = n_tokens.clamp(min=1)
        bsz = batch.tgt_in.size(0)  # target rows: an image with three captions counts three
        if attn is not None:
            penalty = attention_coverage_penalty(attn, batch.tgt_out)
            self.log("train/coverage_penalty", penalty / bsz, batch_size=bsz)
            loss = loss + weight * penalty
        self.log("train/loss", loss / n, prog_bar=True, batch_size=bsz)
        self.log("train/ppl", torch.exp((nll / n).clamp(max=50)), batch_size=bsz)
        # Trainer sets log_every_n_steps in __init__ through a connector; its stub lacks it.
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]
        if self.trainer.global_step % every == 0:
            # Token accuracy needs an argmax over (B, T, V): only on steps that are logged.
            with torch.no_grad():
                real = batch.tgt_out != PAD_ID
                correct = ((logits.argmax(-1) == batch.tgt_out) & real).sum()
            self.log("train/acc", correct / n, batch_size=bsz)
        return loss / n

    # -- validation and test: loss, perplexity, and BLEU/chrF of decoded translations ----

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []
        self._val_sums = torch.zeros(3, device=self.device)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        logits = self(batch)
        loss, nll, n_tokens = label_smoothed_nll(logits, batch.tgt_out,
                                                 self.hparams["label_smoothing"])
        self._val_sums += torch.stack([loss.detach(), nll.detach(), n_tokens.float()])
        settings = self.hparams["test_decoding" if self.trainer.testing else "validation"]
        hyps = self.best_token_ids(batch, **settings)
        self._val_outputs.append((batch.indices.tolist(), hyps))

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val", "valid")

    # A test is a validation on the test split with test_decoding (validation_step reads
    # trainer.testing): the same hooks, not a copy. Lightning finds hooks by attribute name.
    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._eval_end("test", "test")

    def best_token_ids(self, batch: Batch, **settings: Any) -> list[list[int]]:
        """Best hypothesis' token ids for each sentence (greedy when beam_size is 1); an
        empty source line (EOS alone) gives an empty line, as translate.py gives it."""
        results = decode(self.model, batch, Decoding(**settings))
        empty = (batch.src_lengths <= 1).tolist()
        return [[] if e else list(r[0].tokens) for r, e in zip(results, empty, strict=True)]

    def _eval_end(self, prefix: str, split: str) -> None:
        sums = self._val_sums
        # This run's world, not whether some process group exists: an earlier DDP fit in the
        # same process leaves its group behind.
        distributed = self.trainer.world_size > 1
        if distributed:
            dist.all_reduce(sums)
        n = sums[2].clamp(min=1)
        self.log(f"{prefix}/loss", sums[0] / n)
        self.log(f"{prefix}/ppl", torch.exp((sums[1] / n).clamp(max=50)))
        if self.trainer.sanity_checking:
            return
        outputs = self._val_outputs
        if distributed:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, outputs)
            outputs = [o for rank_outputs in gathered for o in rank_outputs]
        if self.references is None or self.tgt_spm is None:
            return
        refs = self.references(split)
        by_index: dict[int, list[int]] = {}
        for indices, token_ids in outputs:
            by_index.update(zip(indices, token_ids, strict=True))
        decoded = sorted(by_index)
        if len(decoded) < len(refs) and not self._partial_noted:
            # limit_val_batches: the scores are those of the decoded part (the same part at
            # every validation, since evaluation batches are not shuffled).
            log.info("%s scores are computed on the %d of %d sentences decoded "
                     "(limit_%s_batches)", prefix, len(decoded), len(refs), prefix)
            self._partial_noted = True
        if not decoded:
            return
        hyps = self.tgt_tokenizer.decode([by_index[i] for i in decoded])
        scores = self.scorer(hyps, [refs[i] for i in decoded])
        for name, value in scores.items():
            self.log(f"{prefix}/{name}", float(value), prog_bar=name in ("bleu", "cider"))

    # -- optimization --------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.hparams["optim"], self.parameter_groups(), self.monitor,
                               total_steps=lambda: self.trainer.estimated_stepping_batches)


    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters; a fine-tuned image backbone with ``encoder_lr`` set is
        a group of its own with that learning rate."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        lr = self.model.record["config"].get("encoder_lr") if self.model.record else None
        backbone = getattr(self.model.encoder, "backbone_parameters", None)
        if lr is None or backbone is None:
            return [{"params": trainable}]
        own = {id(p) for p in backbone() if p.requires_grad}
        return [{"params": [p for p in trainable if id(p) in own], "lr": lr},
                {"params": [p for p in trainable if id(p) not in own]}]


Scorer = Callable[[list[str], list[Any]], dict[str, float]]


def translation_scores(hypotheses: list[str], references: list[Any],
                       scoring: Scoring | None = None) -> dict[str, float]:
    """BLEU, chrF and lowercased BLEU (EVAL_METRICS) of translations, one reference each,
    as ``scoring`` says (the target language: nmt/core/metrics.py)."""
    scores = corpus_scores(hypotheses, references, EVAL_METRICS, scoring)
    return {name: float(scores[name]) for name in EVAL_METRICS}


@functools.lru_cache(maxsize=4)
def _tokenizer(model_proto: bytes) -> Tokenizer:
    return Tokenizer(model_proto)

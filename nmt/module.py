"""The LightningModule: loss, metrics, validation BLEU, optimizers and schedules.

It takes plain hyperparameters and builds its own network, so a checkpoint loads
with no Hydra and no config file beside it; the SentencePiece models travel in
the checkpoint too (``checkpoint["tokenizers"]``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

from nmt.data.dataset import Batch
from nmt.data.tokenizer import PAD_ID, Tokenizer
from nmt.decoding import Decoding, decode
from nmt.errors import ConfigError
from nmt.metrics import corpus_scores
from nmt.model.registry import build_model, model_record, upgrade_checkpoint

log = logging.getLogger(__name__)

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
SCHEDULERS = ("none", "plateau", "inverse_sqrt", "cosine")


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy over (N, V) logits with a hand-written backward.

    Autograd through log_softmax, gather and mean writes several (N, V) buffers;
    here the forward needs one logsumexp and the backward one softmax, which is
    most of the saving when V is in the thousands (a profile showed about 10% of a
    training step in the loss otherwise).
    """

    @staticmethod
    def forward(ctx, logits, target, real, smoothing):  # (N, V), (N,), (N,) bool, float
        lse = torch.logsumexp(logits, dim=-1)  # (N,)
        nll = (lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)) * real
        uniform = (lse - logits.mean(dim=-1)) * real  # -mean_v log p_v
        loss = (1.0 - smoothing) * nll.sum() + smoothing * uniform.sum()
        ctx.save_for_backward(logits, lse, target, real)
        ctx.smoothing = smoothing
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)  # for perplexity only: backward() on it fails
        return loss, nll_sum

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        logits, lse, target, real = ctx.saved_tensors
        eps = ctx.smoothing
        grad = torch.softmax(logits, dim=1)  # (N, V); faster here than exp(logits - lse)
        if eps:
            grad -= eps / logits.size(1)
        grad.scatter_add_(1, target.unsqueeze(1),
                          torch.full_like(lse, -(1.0 - eps)).unsqueeze(1))
        grad *= (real.to(grad.dtype) * grad_loss).unsqueeze(1)
        return grad, None, None, None


def label_smoothed_nll(logits: torch.Tensor, target: torch.Tensor, smoothing: float,
                       pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed loss, summed NLL and the number of real target tokens.

    The same loss as nn.CrossEntropyLoss(label_smoothing=smoothing, ignore_index=pad_id,
    reduction="sum") (a test checks it), computed in one pass that also gives the NLL
    for the perplexity.
    """
    logits = logits.reshape(-1, logits.size(-1)).float()  # (N, V)
    target = target.reshape(-1)  # (N,)
    real = target != pad_id
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, real.to(logits.dtype), smoothing)
    return loss, nll, real.sum()


def inverse_sqrt_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to 1, then decay with 1/sqrt(step) (Vaswani et al.)."""
    step += 1
    warmup = max(1, warmup_steps)
    return min(step / warmup, math.sqrt(warmup / step))


def cosine_factor(step: int, warmup_steps: int, total_steps: int, min_factor: float) -> float:
    """Linear warmup, then a half cosine from 1 down to ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


class TranslationModule(L.LightningModule):
    """Seq2seq training with label-smoothed cross-entropy and validation BLEU/chrF."""

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, model: dict[str, Any],
                 optim: dict[str, Any], label_smoothing: float = 0.1,
                 validation: dict[str, Any] | None = None,
                 test_decoding: dict[str, Any] | None = None,
                 max_src_len: int | None = None) -> None:
        super().__init__()
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        validation = dataclasses.asdict(Decoding.from_dict(validation, "validation",
                                                           beam_size=1))
        test_decoding = dataclasses.asdict(Decoding.from_dict(test_decoding or validation,
                                                              "test_decoding"))
        check_optim(optim)
        self.save_hyperparameters()
        try:
            self.model = build_model(model, src_vocab_size, tgt_vocab_size, PAD_ID)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model: {e}") from None
        self.src_spm: bytes | None = None
        self.tgt_spm: bytes | None = None
        self._step_start: float | None = None
        self._val_outputs: list[tuple[list[int], list[list[int]]]] = []
        self._val_sums = torch.zeros(3)  # loss, nll, tokens
        self._fit_start: float | None = None
        self._partial_noted = False
        self.monitor = ("val/bleu", "max")  # what the plateau scheduler follows (set by train)
        self.scores: dict[str, Any] = {}  # the last corpus scores, with sacrebleu signatures

    # -- tokenizers in the checkpoint ----------------------------------------------------

    def set_tokenizers(self, src: Tokenizer, tgt: Tokenizer) -> None:
        self.src_spm, self.tgt_spm = src.model_proto, tgt.model_proto

    @property
    def tgt_tokenizer(self) -> Tokenizer:
        if self.tgt_spm is None:
            raise RuntimeError("no tokenizers: call set_tokenizers first")
        return _tokenizer(self.tgt_spm)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokenizers"] = {"src": self.src_spm, "tgt": self.tgt_spm}
        checkpoint["model_record"] = model_record(self.model)  # rebuilt with no config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint, self.model)  # one from before model records: resumable
        tokenizers = checkpoint.get("tokenizers") or {}
        self.src_spm, self.tgt_spm = tokenizers.get("src"), tokenizers.get("tgt")

    # -- training ------------------------------------------------------------------------

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.src, batch.src_lengths, batch.tgt_in)  # (B, T, V)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss, nll, n_tokens = label_smoothed_nll(logits, batch.tgt_out,
                                                 self.hparams.label_smoothing)
        n = n_tokens.clamp(min=1)
        bsz = batch.src.size(0)
        self.log("train/loss", loss / n, prog_bar=True, batch_size=bsz)
        self.log("train/ppl", torch.exp((nll / n).clamp(max=50)), batch_size=bsz)
        if self.trainer.global_step % self.trainer.log_every_n_steps == 0:
            # Token accuracy needs an argmax over (B, T, V): only on steps that are logged.
            with torch.no_grad():
                real = batch.tgt_out != PAD_ID
                correct = ((logits.argmax(-1) == batch.tgt_out) & real).sum()
            self.log("train/acc", correct / n, batch_size=bsz)
        return loss / n

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        if self._step_start is None:
            self._step_start = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        # Time from one step's end to the next: data loading included.
        now = time.perf_counter()
        elapsed = now - (self._step_start or now)
        self._step_start = now
        real = int(batch.src_lengths.sum()) + int((batch.tgt_out != PAD_ID).sum())
        if elapsed > 0:
            self.log("train/tokens_per_s", real / elapsed * self.trainer.world_size,
                     prog_bar=True, batch_size=batch.src.size(0))

    # -- validation and test: loss, perplexity, and BLEU/chrF of decoded translations ----

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val", "valid")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test", "test")

    def _eval_start(self) -> None:
        self._val_outputs = []
        self._val_sums = torch.zeros(3, device=self.device)

    def _eval_step(self, batch: Batch) -> None:
        logits = self(batch)
        loss, nll, n_tokens = label_smoothed_nll(logits, batch.tgt_out,
                                                 self.hparams.label_smoothing)
        self._val_sums += torch.stack([loss.detach(), nll.detach(), n_tokens.float()])
        settings = self.hparams.test_decoding if self.trainer.testing else self.hparams.validation
        hyps = self.best_token_ids(batch, **settings)
        self._val_outputs.append((batch.indices.tolist(), hyps))

    def best_token_ids(self, batch: Batch, **settings: Any) -> list[list[int]]:
        """Best hypothesis' token ids for each sentence (greedy when beam_size is 1)."""
        results = decode(self.model, batch, Decoding(**settings))
        return [list(r[0].tokens) for r in results]

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
        refs = self._references(split)
        if refs is None or self.tgt_spm is None:
            return
        by_index: dict[int, list[int]] = {}
        for indices, hyps in outputs:
            by_index.update(zip(indices, hyps, strict=True))
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
        scores = corpus_scores(hyps, [refs[i] for i in decoded], ("bleu", "chrf", "bleu_lc"))
        for name in ("bleu", "chrf", "bleu_lc"):
            self.log(f"{prefix}/{name}", scores[name], prog_bar=name == "bleu")
        if self._fit_start is not None and prefix == "val":
            self.log("val/train_minutes", (time.perf_counter() - self._fit_start) / 60)
        self.scores = {f"{prefix}/{k}": v for k, v in scores.items()}

    def _references(self, split: str) -> list[str] | None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "references"):
            return None
        return dm.references(split)

    # -- optimization --------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        o = dict(self.hparams.optim)
        name = o.pop("name")
        sched = dict(o.pop("scheduler", None) or {"name": "none"})
        optimizer = OPTIMIZERS[name](self.parameters(), **o)
        kind = sched.pop("name")
        if kind == "none":
            return optimizer
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=self.monitor[1], factor=sched.get("factor", 0.5),
                patience=sched.get("patience", 2), min_lr=sched.get("min_lr", 0.0))
            return {"optimizer": optimizer, "lr_scheduler": {
                "scheduler": scheduler, "monitor": self.monitor[0], "interval": "epoch",
                "strict": False}}
        warmup = int(sched.get("warmup_steps", 0))
        if kind == "inverse_sqrt":
            fn = functools.partial(inverse_sqrt_factor, warmup_steps=warmup)
        else:  # cosine
            total = sched.get("total_steps") or self.trainer.estimated_stepping_batches
            min_factor = sched.get("min_lr", 0.0) / o.get("lr", 1.0)
            fn = functools.partial(cosine_factor, warmup_steps=warmup, total_steps=int(total),
                                   min_factor=min_factor)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}


@functools.lru_cache(maxsize=4)
def _tokenizer(model_proto: bytes) -> Tokenizer:
    return Tokenizer(model_proto)


OPTIM_KEYS = {
    "adam": {"lr", "betas", "eps", "weight_decay", "amsgrad"},
    "adamw": {"lr", "betas", "eps", "weight_decay", "amsgrad"},
    "sgd": {"lr", "momentum", "dampening", "weight_decay", "nesterov"},
}
SCHEDULER_KEYS = {"name", "factor", "patience", "min_lr", "warmup_steps", "total_steps"}


def check_optim(optim: dict[str, Any]) -> None:
    """Refuse an unknown optimizer, scheduler or option before anything is built."""
    name = optim.get("name")
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid choices: {', '.join(OPTIMIZERS)}")
    unknown = set(optim) - OPTIM_KEYS[name] - {"name", "scheduler"}
    if unknown:
        raise ConfigError(f"optim: unknown key(s) {sorted(unknown)} for {name}; "
                          f"valid keys: {', '.join(sorted(OPTIM_KEYS[name]))}")
    if not optim.get("lr", 1.0) > 0:
        raise ConfigError(f"optim.lr must be positive, got {optim.get('lr')}")
    sched = optim.get("scheduler") or {"name": "none"}
    if sched.get("name") not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {sched.get('name')!r}; "
                          f"valid choices: {', '.join(SCHEDULERS)}")
    unknown = set(sched) - SCHEDULER_KEYS
    if unknown:
        raise ConfigError(f"optim.scheduler: unknown key(s) {sorted(unknown)}; "
                          f"valid keys: {', '.join(sorted(SCHEDULER_KEYS))}")


"""Text in, text out: a trained checkpoint with its own SentencePiece models.

    translator = Translator.from_checkpoint("model.ckpt", device="cpu")
    translator.translate(["A dog runs.", ""], beam_size=5)   # -> ["Ein Hund rennt.", ""]

Sentences are encoded, sorted by length into token-budget batches, decoded with
greedy, beam or sampling search (nmt/search.py), and returned in input order:
one output per input, an empty or whitespace-only input giving an empty output.

On the CPU, ``workers`` batches are decoded at once (two by default), each on its
share of torch's threads: a batch's small per-step products and element-wise work
use one core better than two cores share them. The model keeps no state between
steps, so the batches cannot interfere: the results are those of one batch at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from nmt.data.dataset import collate
from nmt.data.sampler import TokenBatchSampler
from nmt.data.tokenizer import Tokenizer
from nmt.decoding import Decoding, SourceBatch, decode, load_checkpoint
from nmt.errors import CheckpointError, ConfigError, TokenizerError
from nmt.model import Seq2Seq, model_from_checkpoint
from nmt.search import Hypothesis

log = logging.getLogger(__name__)

DEFAULT_MAX_SRC_LEN = 250
DEFAULT_BATCH_TOKENS = 10000

T = TypeVar("T")


@dataclass
class Translation:
    """The hypotheses of one input sentence, best first."""

    source: str
    source_pieces: list[str]
    hypotheses: list[Hypothesis]
    texts: list[str]
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class Translator:
    """A model and its tokenizers, ready to translate text."""

    def __init__(self, model: Seq2Seq, src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer,
                 device: str | torch.device = "cpu",
                 max_src_len: int = DEFAULT_MAX_SRC_LEN, workers: int | None = None) -> None:
        """``workers``: batches decoded at once on the CPU, each on its share of torch's
        threads (None: 2, or 1 with a single thread; 1: one batch at a time on all of
        them). A GPU decodes one batch at a time."""
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers must be a positive integer (or null), got {workers!r}")
        self.model = model.to(device).eval()
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer
        self.device = torch.device(device)
        self.max_src_len = max_src_len
        if self.device.type != "cpu":
            workers = 1
        self.workers = workers or min(2, torch.get_num_threads())
        self.truncated = 0  # inputs cut to max_src_len tokens so far

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        max_src_len: int | None = None, workers: int | None = None
                        ) -> Translator:
        ckpt = load_checkpoint(path, "cpu")
        hp = ckpt["hyper_parameters"]
        model = model_from_checkpoint(ckpt, str(path))  # CheckpointError naming the file
        try:
            src = Tokenizer(ckpt["tokenizers"]["src"])
            tgt = Tokenizer(ckpt["tokenizers"]["tgt"])
        except (KeyError, TypeError, ValueError, RuntimeError, TokenizerError) as e:
            raise CheckpointError(f"{path}: the checkpoint does not fit this toolkit's "
                                  f"model ({str(e).splitlines()[0]})") from None
        return cls(model, src, tgt, device,
                   max_src_len or hp.get("max_src_len") or DEFAULT_MAX_SRC_LEN, workers)

    # -- translation ---------------------------------------------------------------------

    def translate(self, sentences: list[str], beam_size: int = 5,
                  batch_tokens: int = DEFAULT_BATCH_TOKENS, **decoding: Any) -> list[str]:
        """The best translation of each sentence, in input order."""
        settings = Decoding(beam_size=beam_size, **decoding)
        return [t.text for t in self.translate_full(sentences, settings, batch_tokens)]

    def translate_stream(self, lines: Iterable[str], decoding: Decoding,
                         batch_tokens: int = DEFAULT_BATCH_TOKENS, chunk_size: int = 2000,
                         attention_first: int = 0) -> Iterator[Translation]:
        """Translate an iterable of lines chunk by chunk: memory stays flat for any input.

        Attention weights are kept for chunks that hold one of the first
        ``attention_first`` lines.
        """
        chunk: list[str] = []
        done = 0
        for line in lines:
            chunk.append(line)
            if len(chunk) >= chunk_size:
                yield from self.translate_full(chunk, decoding, batch_tokens,
                                               done < attention_first)
                done += len(chunk)
                chunk = []
        if chunk:
            yield from self.translate_full(chunk, decoding, batch_tokens, done < attention_first)

    def translate_full(self, sentences: list[str], decoding: Decoding = Decoding(),  # noqa: B008
                       batch_tokens: int = DEFAULT_BATCH_TOKENS, return_attention: bool = False
                       ) -> list[Translation]:
        """Every hypothesis of every sentence, with pieces and attention when asked for.

        A batch holds at most ``batch_tokens / beam_size`` source tokens, padding
        included: its (sentences x beams) decoder rows attend over about
        ``batch_tokens`` source positions whatever the beam size.
        """
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ConfigError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        results: list[Translation | None] = [None] * len(sentences)
        todo = [i for i, s in enumerate(sentences) if s.strip()]
        for i, s in enumerate(sentences):
            if not s.strip():
                results[i] = Translation(s, [], [], [""] * decoding.n_best)
        ids = self.src_tokenizer.encode([sentences[i] for i in todo]) if todo else []
        truncated = set()
        for j, seq in enumerate(ids):
            if len(seq) > self.max_src_len - 1:  # room for EOS
                ids[j] = seq[: self.max_src_len - 1]
                truncated.add(j)
        if truncated:
            self.truncated += len(truncated)
            log.warning("%d input(s) longer than %d tokens were truncated", len(truncated),
                        self.max_src_len)
        lengths = np.fromiter((len(s) + 1 for s in ids), dtype=np.int64, count=len(ids))
        generator = (torch.Generator(device=self.device).manual_seed(decoding.seed)
                     if decoding.sampling else None)
        if len(ids):
            beams = 1 if decoding.sampling else decoding.beam_size
            budget = max(batch_tokens // beams, 1)
            batches = list(TokenBatchSampler(lengths, np.zeros_like(lengths), budget,
                                             shuffle=False))

            def run(batch_idx: np.ndarray) -> tuple[np.ndarray, list[list[Hypothesis]]]:
                examples = [(j, np.asarray(ids[j], dtype=np.int64), np.zeros(0, np.int64))
                            for j in batch_idx]
                batch = collate(examples)
                sources = SourceBatch(batch.src.to(self.device), batch.src_lengths.to(self.device))
                return batch_idx, decode(self.model, sources, decoding, return_attention,
                                         generator)

            # Sampling draws from one generator: one batch at a time, in a fixed order.
            workers = 1 if decoding.sampling else self.workers
            for batch_idx, hyps in _run_parallel(run, batches, workers,
                                                 cost=lambda b: len(b) * int(lengths[b].max())):
                texts = [self.tgt_tokenizer.decode([h.tokens for h in hs]) for hs in hyps]
                for j, hs, ts in zip(batch_idx, hyps, texts, strict=True):
                    i = todo[j]
                    pieces = ([self.src_tokenizer.sp.id_to_piece(t) for t in ids[j]] + ["</s>"]
                              if return_attention else [])  # only plots need them
                    results[i] = Translation(sentences[i], pieces, hs, ts, j in truncated)
        return results  # type: ignore[return-value]



def _run_parallel(fn: Callable[[np.ndarray], T], batches: list[np.ndarray], workers: int,
                  cost: Callable[[np.ndarray], int]) -> Iterator[T]:
    """``fn`` on every batch, ``workers`` at a time, each on its share of torch's threads;
    results in the order of submission, the largest batches (by ``cost``) first so that
    none of them starts last. One worker: in the given order, on the caller's threads."""
    workers = min(workers, len(batches))
    if workers <= 1:
        yield from map(fn, batches)
        return
    threads = torch.get_num_threads()
    share = max(1, threads // workers)

    def on_share(batch: np.ndarray) -> T:
        torch.set_num_threads(share)  # this thread's own OpenMP and MKL settings
        return fn(batch)

    torch.set_num_threads(share)  # ... and the default of threads that start meanwhile
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nmt-decode")
    try:
        yield from pool.map(on_share, sorted(batches, key=cost, reverse=True))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)

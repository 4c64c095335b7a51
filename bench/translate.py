"""Translation speed benchmark on Multi30k en->de test_2016_flickr.

    python bench/translate.py [--checkpoint model.ckpt] [--unbatched 1000] [--train-steps 300]
                              [--device cpu|cuda] [--workers N] [--batch-tokens N]

Without a checkpoint, the script first trains the default recipe briefly itself
(--train-steps). It then translates the test set greedily and with beam 5 in
token-budget batches, and with beam 5 one sentence at a time (the first
--unbatched sentences), all in the same run, and checks that batched and
unbatched beam search agree. It times beam 5 with the lexical shortlist
(nmt/decoding/shortlist.py; built from the training pairs when the checkpoint carries
no table) against beam 5 without it, with the BLEU of both. On the CPU it
also times one batch at a time (workers=1), counts the FLOPs that decoding
takes per sentence and measures this machine's own float32 matmul speed,
which bounds what any decoder of this model can reach here. The last line
printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flops import ceiling, counting, sgemm_gflop_per_s  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from multi30k import split_lines  # noqa: E402

from nmt.core.metrics import Scoring, corpus_scores  # noqa: E402
from nmt.decoding.options import Decoding  # noqa: E402
from nmt.decoding.shortlist import from_lines  # noqa: E402
from nmt.inference.options import resolve_workers  # noqa: E402
from nmt.inference.translator import (  # noqa: E402
    DEFAULT_BATCH_TOKENS,
    Translator,
    length_batches,
    pad_sources,
)

THREADS = torch.get_num_threads()  # all of them, before any sharing


def train_briefly(steps: int, run_dir: Path) -> Path:
    from nmt.training.train import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
            "test_after_training=false", f"run_dir={run_dir}"])
    train(cfg)
    return run_dir / "checkpoints" / "last.ckpt"


@contextlib.contextmanager
def batches_at_once(translator: Translator, workers: int | None) -> Iterator[None]:
    """``translator.workers`` set to ``workers`` inside (None: left as it is), each worker
    on its share of torch's threads as the command line sets them; all threads after."""
    default = translator.workers
    translator.workers = workers or default
    # The translator's pool threads start in each call and take this setting.
    torch.set_num_threads(max(1, THREADS // translator.workers))
    try:
        yield
    finally:
        translator.workers = default
        torch.set_num_threads(THREADS)


def sentences_per_s(translator: Translator, sources: list[str], beam: int, batch_tokens: int,
                    workers: int | None = None, shortlist: bool = False
                    ) -> tuple[list[str], float]:
    """Translations and their speed, with ``workers`` batches at a time (None: default)."""
    with batches_at_once(translator, workers):
        start = time.perf_counter()
        out = translator.translate_text(sources, Decoding(beam_size=beam, shortlist=shortlist),
                                        batch_tokens=batch_tokens)
        return out, round(len(sources) / (time.perf_counter() - start), 1)


def shortlist_result(translator: Translator, sources: list[str], references: list[str],
                     train: tuple[list[str], list[str]], batch_tokens: int) -> dict:
    """Beam 5 with and without the lexical shortlist: speed ratio (two rounds each,
    alternating, so that a drifting load weighs on both) and BLEU on the same lines."""
    out: dict = {}
    if translator.shortlist is None:  # a checkpoint from before tables: built here
        translator.shortlist = from_lines(*train, translator.src_tokenizer,
                                          translator.tgt_tokenizer).to(translator.device)
        out["shortlist_built_by_bench"] = True
    seconds = {False: 0.0, True: 0.0}
    texts = {}
    for _ in range(2):
        for cut in (False, True):
            texts[cut], speed = sentences_per_s(translator, sources, 5, batch_tokens,
                                                shortlist=cut)
            seconds[cut] += len(sources) / speed
    bleu = {cut: corpus_scores(texts[cut], references, ("bleu",), Scoring("de"))["bleu"]
            for cut in texts}
    lengths = np.array([len(ids) + 1 for ids in translator.src_tokenizer.encode(sources)])
    sizes, own = [], []  # the widest sentence's candidates per batch; each sentence's
    for batch in length_batches(lengths, batch_tokens // 5):
        src, _ = pad_sources(translator.src_tokenizer.encode([sources[i] for i in batch]),
                             translator.device)
        _, valid = translator.shortlist.candidates(src)
        sizes.append(valid.size(1))
        own.extend(valid.sum(1).tolist())
    out.update({
        "shortlist_speedup": round(seconds[False] / seconds[True], 2),
        # BLEU the shortlist costs (negative: it gained), signed so a gain hides no loss.
        "shortlist_bleu_delta": round(bleu[False] - bleu[True], 2),
        "beam5_bleu": bleu[False], "shortlist_beam5_bleu": bleu[True],
        "shortlist_beam5_sentences_per_s": round(2 * len(sources) / seconds[True], 1),
        "shortlist_mean_candidates": round(float(np.mean(own)), 1),
        "shortlist_mean_batch_width": round(float(np.mean(sizes)), 1),
        "tgt_vocab_size": translator.tgt_tokenizer.vocab_size})
    return out


def mflop_per_sentence(translator: Translator, sources: list[str], beam: int,
                       batch_tokens: int) -> float:
    """FLOPs of decoding (encoder, decoder steps, output layer), one batch at a time."""
    # One worker: the counter sees the ops of this thread only.
    with batches_at_once(translator, 1), counting(translator.model) as count:
        translator.translate_text(sources, Decoding(beam_size=beam), batch_tokens=batch_tokens)
    return round(count.total / len(sources) / 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--unbatched", type=int, default=1000,
                        help="sentences translated one at a time (default: all 1000)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, help="batches at once on the CPU (default: 2)")
    args = parser.parse_args()

    sources, references = split_lines("test_2016_flickr")
    train = split_lines("train")
    tokens = args.batch_tokens
    cpu = args.device == "cpu"

    with tempfile.TemporaryDirectory(prefix="nmt-bench-translate-") as tmp:
        checkpoint = args.checkpoint or train_briefly(args.train_steps, Path(tmp))
        translator = Translator.from_checkpoint(
            checkpoint, device=args.device, workers=resolve_workers(args.workers, args.device))
        beam5 = Decoding(beam_size=5)
        translator.translate_text(sources[:50], beam5)  # warm-up

        result: dict = {"device": args.device, "workers": translator.workers}
        _, result["greedy_sentences_per_s"] = sentences_per_s(translator, sources, 1, tokens)
        beam, result["beam5_sentences_per_s"] = sentences_per_s(translator, sources, 5, tokens)
        subset = sources[: args.unbatched]
        start = time.perf_counter()
        # One sentence, one batch: on the caller's thread, with all threads.
        single = [translator.translate_text([s], beam5)[0] for s in subset]
        result["beam5_unbatched_sentences_per_s"] = round(
            len(subset) / (time.perf_counter() - start), 1)
        result.update(shortlist_result(translator, sources, references, train, tokens))
        if cpu:
            _, result["greedy_workers1_sentences_per_s"] = sentences_per_s(
                translator, sources, 1, tokens, workers=1)
            _, result["beam5_workers1_sentences_per_s"] = sentences_per_s(
                translator, sources, 5, tokens, workers=1)
            sample = sources[::5]  # 200 sentences of every length
            for name, k in (("greedy", 1), ("beam5", 5)):
                mflop = mflop_per_sentence(translator, sample, k, tokens)
                result[f"{name}_mflop_per_sentence"] = mflop
                result[f"{name}_gflop_per_s"] = round(
                    mflop * result[f"{name}_sentences_per_s"] / 1e3, 1)
            sgemm = sgemm_gflop_per_s()
            result["sgemm_gflop_per_s"] = round(sgemm, 1)
            # No decoder of this model can beat the machine's own large-matmul speed.
            for name in ("greedy", "beam5"):
                result[f"{name}_sentences_per_s_at_sgemm_speed"] = round(
                    sgemm * 1e3 / result[f"{name}_mflop_per_sentence"], 1)
                result[f"{name}_over_sgemm"] = round(result[f"{name}_gflop_per_s"] / sgemm, 3)
        else:  # a GPU: its float32 matmul peak, measured now
            result["ceiling"], peak = ceiling(args.device)
            result["ceiling_gflop_per_s"] = round(peak, 1)
    result.update({
        "checkpoint": str(args.checkpoint or f"default recipe, {args.train_steps} steps"),
        "sentences": len(sources),
        "unbatched_sentences": len(subset),
        "batched_over_unbatched": round(result["beam5_sentences_per_s"]
                                        / result["beam5_unbatched_sentences_per_s"], 2),
        "identical_outputs": beam[: len(subset)] == single,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "decoding": {k: v for k, v in vars(Decoding(beam_size=5)).items()
                     if k in ("alpha", "max_len_a", "max_len_b")},
        "batch_tokens": tokens,
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()

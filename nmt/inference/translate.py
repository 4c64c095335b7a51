"""translate.py: translate whole files (or stdin) with a checkpoint, one line per line.

Output goes to a temporary file beside the target, renamed when complete, so an
interrupted run never leaves a half-written file. With ``decoding.n_best`` > 1
the output is in Moses n-best format, ``n_best`` lines per input line:
``<0-based line> ||| <translation> ||| <score>``.

``mode=score`` reads a reference file beside each input and writes, per line pair, the
model's log-probability of the reference (see ``score_file``); a list of checkpoints
translates or scores with their ensemble (nmt/decoding/ensemble.py). On a terminal, one
line at a time: nmt/inference/interactive.py.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from nmt.core.errors import ConfigError, DataError
from nmt.data.corpus import zip_aligned
from nmt.decoding.options import Decoding
from nmt.inference.options import (
    as_list,
    atomic_output,
    input_lines,
    resolve_device,
    resolve_workers,
    share_threads,
)
from nmt.inference.translator import Translation, Translator

log = logging.getLogger(__name__)
T = TypeVar("T")


def format_translation(index: int, tr: Translation, n_best: int) -> str:
    clean = [t.replace("\n", " ") for t in tr.texts]
    if n_best == 1:
        return (clean[0] if clean else "") + "\n"
    scores = [h.score for h in tr.hypotheses]
    return "".join(f"{index} ||| {t} ||| {s:.4f}\n" for t, s in zip(clean, scores, strict=True))


def translate_file(translator: Translator, inp: str, out: str, decoding: Decoding,
                   batch_tokens: int, chunk_size: int, progress: bool = True,
                   plots_dir: str | None = None, plots_n: int = 0) -> int:
    """Translate one input into one output; return the number of lines.

    Inputs longer than the translator's max_src_len are cut; a warning counts them.
    """
    n = truncated = 0
    lines = input_lines(inp)
    bar = tqdm(desc=f"translating {inp}", unit=" sent", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    with atomic_output(out) as f:
        for n, tr in enumerate(translator.translate_stream(
                lines, decoding, batch_tokens=batch_tokens, chunk_size=chunk_size,
                attention_first=plots_n if plots_dir else 0), start=1):
            f.write(format_translation(n - 1, tr, decoding.n_best))
            truncated += tr.truncated
            if plots_dir and n <= plots_n and tr.hypotheses[0].attention is not None:
                from nmt.inference.plots import plot_attention

                plot_attention(tr, translator.tgt_tokenizer,
                               Path(plots_dir) / f"{Path(inp).name}.{n:04d}.png")
            bar.update(1)
    bar.close()
    if truncated:
        log.warning("%s: %d input(s) longer than %d pieces were truncated", inp, truncated,
                    translator.max_src_len)
    return n


def score_file(translator: Translator, inp: str, ref: str, out: str, alpha: float,
               batch_tokens: int, chunk_size: int, progress: bool = True) -> int:
    """Score every (input line, reference line) pair into ``out``, one line per pair:
    ``<summed log-prob>\t<log-prob / length penalty (alpha)>\t<target pieces + EOS>``.
    The second column is beam search's score for that output; return the pairs."""
    n = 0
    pairs = zip_aligned(input_lines(inp), input_lines(ref), lambda n_inp, n_ref: (
        f"{inp} has {n_inp} lines but {ref} has {n_ref}; "
        "line N of one must be paired with line N of the other"))
    bar = tqdm(desc=f"scoring {inp}", unit=" pairs", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    with atomic_output(out) as f:
        for chunk in chunks(pairs, chunk_size):
            srcs, tgts = zip(*chunk, strict=True)
            for score in translator.score(list(srcs), list(tgts), batch_tokens=batch_tokens):
                f.write(f"{score.total:.4f}\t{score.normalized(alpha):.4f}\t{score.length}\n")
            n += len(chunk)
            bar.update(len(chunk))
    bar.close()
    return n


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


MODES = ("translate", "score")


def load_translator(cfg: Any) -> tuple[Translator, Decoding]:
    """The config's checkpoint(s) on its device, its worker threads set, and its decoding
    settings (checked before the model is loaded)."""
    decoding = Decoding.from_dict(dict(cfg.decoding))
    device = resolve_device(cfg.device)
    workers = resolve_workers(cfg.workers, device, decoding.sampling)
    share_threads(workers)
    translator = Translator.from_checkpoint(cfg.checkpoint, device, cfg.max_src_len, workers)
    return translator, decoding


def run(cfg: Any) -> dict[str, int]:
    """Translate (or, with mode=score, score against references) every input of the
    config; return lines done per input."""
    inputs, outputs = as_list(cfg.input), as_list(cfg.output)
    mode = cfg.get("mode", "translate")
    if mode not in MODES:
        raise ConfigError(f"mode={mode}: valid choices: {', '.join(MODES)}")
    references = as_list(cfg.get("reference"))
    if mode == "score" and len(references) != len(inputs):
        raise ConfigError(f"mode=score needs one reference file per input: {len(inputs)} "
                          f"input(s), {len(references)} reference(s) (reference=tgt.txt)")
    if mode == "translate" and references:
        raise ConfigError("reference= is for mode=score; translation reads only the input")
    if not inputs:
        raise ConfigError("input is not set: give a file, a list of files, or - for stdin")
    if len(outputs) != len(inputs):
        raise ConfigError(f"{len(inputs)} input(s) but {len(outputs)} output(s): give one "
                          "output per input (output=[a.out,b.out])")
    if (inputs + references).count("-") > 1 or outputs.count("-") > 1:
        raise ConfigError("stdin and stdout can be used once each")
    for inp in inputs + references:
        if inp != "-" and not Path(inp).is_file():
            raise DataError(f"{inp}: input file not found")
    if cfg.get("show_pieces"):
        raise ConfigError("show_pieces=true is for interactive translation: a terminal on "
                          "stdin, or interactive=true (input=- output=-)")
    translator, decoding = load_translator(cfg)
    counts = {}
    if mode == "score":
        for inp, ref, out in zip(inputs, references, outputs, strict=True):
            counts[inp] = score_file(translator, inp, ref, out, decoding.alpha,
                                     cfg.batch_tokens, cfg.chunk_size, cfg.progress)
            log.info("%s + %s -> %s: %d pairs scored", inp, ref, out, counts[inp])
        return counts
    for inp, out in zip(inputs, outputs, strict=True):
        counts[inp] = translate_file(translator, inp, out, decoding, cfg.batch_tokens,
                                     cfg.chunk_size, cfg.progress, cfg.attention_plots,
                                     cfg.attention_plots_n)
        log.info("%s -> %s: %d lines", inp, out, counts[inp])
    return counts

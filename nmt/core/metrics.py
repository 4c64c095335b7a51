"""Corpus scores with sacrebleu: BLEU, chrF, TER, each with its signature.

Hypotheses and references are detokenized text, as sacrebleu expects. ``bleu_lc``
is BLEU lowercased with the 13a tokenizer, for comparison with papers that
report it that way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

log = logging.getLogger(__name__)

METRICS = ("bleu", "chrf", "ter", "bleu_lc")
# What training can monitor (callbacks.monitor), and which way is better: picks the best
# checkpoints, early stopping, the plateau scheduler and average.py best=N.
MONITORS = {"val/bleu": "max", "val/chrf": "max", "val/bleu_lc": "max", "val/loss": "min",
            "val/ppl": "min", "val/cider": "max", "val/bleu4": "max", "val/rouge_l": "max"}


def _metric(name: str) -> Metric:
    factories: dict[str, Callable[[], Metric]] = {
        "bleu": BLEU, "chrf": CHRF, "ter": TER,
        "bleu_lc": lambda: BLEU(lowercase=True, tokenize="13a")}
    return factories[name]()


def corpus_scores(hypotheses: list[str], references: list[str],
                  metrics: tuple[str, ...] = METRICS) -> dict[str, float | str]:
    """``{name: score, name_signature: signature}`` for each metric."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    out: dict[str, float | str] = {}
    for name in metrics:
        metric = _metric(name)
        out[name] = round(metric.corpus_score(hypotheses, [references]).score, 4)
        out[f"{name}_signature"] = str(metric.get_signature())
    return out


def signatures(metrics: tuple[str, ...] = METRICS) -> dict[str, str]:
    """``{name_signature: signature}``, as :func:`corpus_scores` reports them.

    A signature depends only on the metric's settings and the number of references
    (one here), but sacrebleu gives it only after a scoring: one of a dummy sentence.
    """
    out = {}
    for name in metrics:
        metric = _metric(name)
        metric.corpus_score(["a"], [["a"]])
        out[f"{name}_signature"] = str(metric.get_signature())
    return out


# -- captions: BLEU-1..4, ROUGE-L and CIDEr-D against every reference caption of an image ----

CAPTION_METRICS = ("bleu", "bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider")
_CLITIC = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*|'[^\W_]+")


def caption_tokens(text: str) -> list[str]:
    """COCO-style tokens without Java: lowercase, clitics split off ("dog's" -> dog 's,
    "don't" -> do n't), punctuation dropped; what the COCO toolkit's PTB tokenizer
    gives for ordinary captions."""
    return _WORD.findall(_CLITIC.sub(r"\1 \2", text.lower()))


def caption_scores(hypotheses: list[str], references: list[list[str]]
                   ) -> dict[str, float]:
    """Corpus scores of one caption per image against all of its references, x100.

    BLEU-n by sacrebleu on caption_tokens (tokenize="none", closest reference length),
    ``bleu`` = BLEU-4; ROUGE-L and CIDEr-D by pycocoevalcap's pure-Python scorers.
    CIDEr-D's IDF comes from the references of the scored images: with fewer than two
    images it is zero for every n-gram, so ``cider`` is left out (a warning says so).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} images")
    if any(not refs for refs in references):
        raise ValueError("every image needs at least one reference caption")
    hyps = [" ".join(caption_tokens(h)) for h in hypotheses]
    refs = [[" ".join(caption_tokens(r)) for r in rs] for rs in references]
    width = max(map(len, refs), default=0)
    streams = [[rs[k] if k < len(rs) else None for rs in refs] for k in range(width)]
    out: dict[str, float] = {}
    for n in range(1, 5):
        bleu = BLEU(tokenize="none", max_ngram_order=n, effective_order=False)
        out[f"bleu{n}"] = round(bleu.corpus_score(hyps, streams).score, 4)  # type: ignore[arg-type]
    out["bleu"] = out["bleu4"]
    if not hyps:
        return out
    from pycocoevalcap.cider.cider import Cider  # pure Python, imported on first use
    from pycocoevalcap.rouge.rouge import Rouge

    res = {i: [h] for i, h in enumerate(hyps)}
    gts = dict(enumerate(refs))
    out["rouge_l"] = round(100 * float(Rouge().compute_score(gts, res)[0]), 4)
    if len(hyps) < 2:
        log.warning("CIDEr-D needs at least two images (its IDF is zero for one): not scored")
    else:
        out["cider"] = round(100 * float(Cider().compute_score(gts, res)[0]), 4)
    return {k: out[k] for k in CAPTION_METRICS if k in out}

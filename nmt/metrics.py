"""Corpus scores with sacrebleu: BLEU, chrF, TER, each with its signature.

Hypotheses and references are detokenized text, as sacrebleu expects. ``bleu_lc``
is BLEU lowercased with the 13a tokenizer, for comparison with papers that
report it that way.
"""

from __future__ import annotations

from collections.abc import Callable

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

METRICS = ("bleu", "chrf", "ter", "bleu_lc")


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

"""Corpus scores with sacrebleu: BLEU, chrF, TER, each with its signature.

Hypotheses and references are detokenized text, as sacrebleu expects, and sacrebleu is
told the target language (``Scoring``): BLEU then picks its own tokenizer, ``zh`` for
Chinese, ``ja-mecab`` for Japanese, ``ko-mecab`` for Korean (the ``ja`` and ``ko`` extras
install MeCab), ``13a`` for every other language, unless ``bleu_tokenize`` names one.
``bleu_lc`` is the same BLEU lowercased (papers on European targets report it that way).
chrF is the same for every language; TER normalizes and treats Asian characters apart
for Chinese, Japanese and Korean targets (sacrebleu's ``--ter-normalized
--ter-asian-support``), which it cannot split into words otherwise.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric
from sacrebleu.metrics.bleu import _TOKENIZERS

from nmt.core.errors import ConfigError
from nmt.core.languages import CJK, primary

log = logging.getLogger(__name__)

METRICS = ("bleu", "chrf", "ter", "bleu_lc")
# What training can monitor (callbacks.monitor), and which way is better: picks the best
# checkpoints, early stopping, the plateau scheduler and average.py best=N.
MONITORS = {"val/bleu": "max", "val/chrf": "max", "val/bleu_lc": "max", "val/loss": "min",
            "val/ppl": "min", "val/cider": "max", "val/bleu4": "max", "val/rouge_l": "max"}
EXTRAS = {"ja-mecab": "ja", "ko-mecab": "ko"}  # BLEU tokenizers that need an extra installed
LANGUAGE_NAMES = {"ja": "Japanese", "ko": "Korean"}


@dataclass(frozen=True)
class Scoring:
    """How translations are scored: into ``tgt_lang`` (a BCP-47 tag; None: a language
    without a tokenizer of its own), BLEU tokenized by ``bleu_tokenize`` when set."""

    tgt_lang: str | None = None
    bleu_tokenize: str | None = None

    def metric(self, name: str) -> Metric:
        lang = primary(self.tgt_lang) if self.tgt_lang else ""
        if name in ("bleu", "bleu_lc"):
            return self._bleu(lang, lowercase=name == "bleu_lc")
        if name == "chrf":
            return CHRF()
        if name == "ter":
            return TER(normalized=lang in CJK, asian_support=lang in CJK)
        raise ValueError(f"unknown metric {name!r}")

    def _bleu(self, lang: str, lowercase: bool) -> BLEU:
        tokenize = self.bleu_tokenize
        if tokenize is not None and tokenize not in _TOKENIZERS:
            raise ConfigError(f"metrics.bleu_tokenize: sacrebleu has no tokenizer "
                              f"{tokenize!r}; it has {', '.join(_TOKENIZERS)}")
        try:
            return BLEU(trg_lang=lang, tokenize=tokenize, lowercase=lowercase)
        except (RuntimeError, ImportError):  # its tokenizer's extra is not installed
            chosen = tokenize or _by_language(lang)
            extra = EXTRAS.get(chosen, lang)
            raise ConfigError(
                f"BLEU into {LANGUAGE_NAMES.get(extra, self.tgt_lang)} uses sacrebleu's "
                f"{chosen} tokenizer, which needs MeCab: pip install -e \".[{extra}]\" "
                f"(or choose another with metrics.bleu_tokenize=...)") from None

    def scores(self, hypotheses: list[str], references: list[str],
               metrics: tuple[str, ...] = METRICS) -> dict[str, float | str]:
        """``{name: score, name_signature: signature}`` for each metric."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        out: dict[str, float | str] = {}
        for name in metrics:
            metric = self.metric(name)
            out[name] = round(metric.corpus_score(hypotheses, [references]).score, 4)
            out[f"{name}_signature"] = str(metric.get_signature())
        return out

    def signatures(self, metrics: tuple[str, ...] = METRICS) -> dict[str, str]:
        """``{name_signature: signature}``, as ``scores`` reports them; also what checks,
        before any work, that every metric can be made (extras installed, names known).

        A signature depends only on the metric's settings and the number of references
        (one here), but sacrebleu gives it only after a scoring: one of a dummy sentence.
        """
        scored = self.scores(["a"], ["a"], metrics)
        return {k: str(v) for k, v in scored.items() if k.endswith("_signature")}


def _by_language(lang: str) -> str:
    return {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}.get(lang, BLEU.TOKENIZER_DEFAULT)


def corpus_scores(hypotheses: list[str], references: list[str],
                  metrics: tuple[str, ...] = METRICS, scoring: Scoring | None = None
                  ) -> dict[str, float | str]:
    """``{name: score, name_signature: signature}`` for each metric (``Scoring.scores``)."""
    return (scoring or Scoring()).scores(hypotheses, references, metrics)


def signatures(metrics: tuple[str, ...] = METRICS, scoring: Scoring | None = None
               ) -> dict[str, str]:
    """``{name_signature: signature}``, as :func:`corpus_scores` reports them."""
    return (scoring or Scoring()).signatures(metrics)


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

"""Our BLEU on the scale of the papers: sacreBLEU cased and lowercased (``bleu_lc``, what
evaluate.py reports) beside the lowercased BLEU of Moses-tokenized text that published
Multi30k results give (multi-bleu.perl on `tokenizer.perl -l de` output, lowercased).

    python bench/paper_bleu.py HYPOTHESES REFERENCES [--lang de]

HYPOTHESES: detokenized output, one sentence a line (evaluate.py's .hyp files);
REFERENCES: the raw references (a .gz is read too). The tokenized scores use
sacremoses (Moses' tokenizer in Python, in the dev extras), then sacreBLEU with
``tokenize=none``: ``bleu_tok_lc`` with Moses' defaults, ``bleu_tok_lc_a`` with its
``-a`` (hyphens split), which some systems used. The last line printed is one JSON
object with those keys and ``bleu``, ``bleu_lc``, ``lines``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sacrebleu

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.data.corpus import read_lines  # noqa: E402


def tokenized_lowercased(lines: Sequence[str], lang: str, aggressive: bool) -> list[str]:
    from sacremoses import MosesTokenizer

    tokenizer = MosesTokenizer(lang=lang)
    return [tokenizer.tokenize(line, escape=False, aggressive_dash_splits=aggressive,
                               return_str=True).lower() for line in lines]


def scores(hypotheses: list[str], references: list[str], lang: str) -> dict[str, Any]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    out: dict[str, Any] = {
        "lines": len(hypotheses),
        "bleu": round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2),
        "bleu_lc": round(sacrebleu.corpus_bleu(hypotheses, [references],
                                               lowercase=True).score, 2)}
    for key, aggressive in (("bleu_tok_lc", False), ("bleu_tok_lc_a", True)):
        hyps = tokenized_lowercased(hypotheses, lang, aggressive)
        refs = tokenized_lowercased(references, lang, aggressive)
        out[key] = round(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none",
                                               force=True).score, 2)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("hypotheses")
    parser.add_argument("references")
    parser.add_argument("--lang", default="de", help="the target language (Moses' rules)")
    args = parser.parse_args(argv)
    result = scores(list(read_lines(args.hypotheses, allow_empty=True)),
                    list(read_lines(args.references, allow_empty=True)), args.lang)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

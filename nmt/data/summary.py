"""What ``prepare`` produced, summed up: sizes, vocabularies, lengths, cleaning, batches
and padding (``python -m nmt.cli prepare`` prints it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nmt.core.tokens import UNK_ID
from nmt.data.prepare import PreparedData
from nmt.data.sampler import TokenBatchSampler


def padding_ratio(sampler: TokenBatchSampler, epoch: int = 0) -> float:
    """Padding tokens / all tokens of the padded source and target tensors of one epoch."""
    real = padded = 0
    for b in sampler.batches(epoch):
        s, t = sampler.src_lengths[b], sampler.tgt_lengths[b]
        real += int(s.sum() + t.sum())
        padded += len(b) * int(s.max() + t.max())
    return 1.0 - real / padded if padded else 0.0


def unknown_rate(ids: list[np.ndarray], chunk: int = 1 << 24) -> float:
    """The share of unknown pieces among the ``ids`` of one side of a split's stored
    corpora (memory-mapped: counted a chunk at a time)."""
    unknown = sum(int(np.count_nonzero(side[k:k + chunk] == UNK_ID))
                  for side in ids for k in range(0, len(side), chunk))
    total = sum(len(side) for side in ids)
    return round(unknown / total, 6) if total else 0.0


def describe(prepared: PreparedData, max_tokens: int) -> dict[str, Any]:
    """A summary of prepared data: sizes, vocabularies, lengths, batches, padding."""
    summary: dict[str, Any] = {
        "tokenizer": "joint" if prepared.joint else "separate",
        "src_vocab": prepared.src_tokenizer.vocab_size,
        "tgt_vocab": prepared.tgt_tokenizer.vocab_size,
        # what tokenizer.character_coverage (auto by default) trained them with
        "src_character_coverage": prepared.src_tokenizer.character_coverage,
        "tgt_character_coverage": prepared.tgt_tokenizer.character_coverage,
    }
    for split, ds in prepared.datasets.items():
        stored = [d for _, d in prepared.corpora] if split == "train" else [ds]
        summary[split] = {
            "pairs": len(ds),
            "src_tokens": int(ds.src_lengths.sum()),
            "tgt_tokens": int(ds.tgt_lengths.sum()),
            "src_len_mean": round(float(np.mean(ds.src_lengths)), 2) if len(ds) else 0.0,
            "tgt_len_mean": round(float(np.mean(ds.tgt_lengths)), 2) if len(ds) else 0.0,
            # pieces the tokenizer could not cover (tokenizer.character_coverage)
            "src_unk_rate": unknown_rate([d.src_ids for d in stored]),
            "tgt_unk_rate": unknown_rate([d.tgt_ids for d in stored]),
        }
    train = prepared.datasets["train"]
    reports = [(name, ds.clean_report) for name, ds in prepared.corpora]
    summary["train"]["clean"] = reports[0][1].to_dict() if len(reports) == 1 else {
        key: sum(r.to_dict()[key] for _, r in reports) for key in reports[0][1].to_dict()}
    if len(reports) > 1:
        summary["train"]["corpora"] = [
            {"name": name, "pairs": report.kept, "share": round(share, 4),
             "clean": report.to_dict()}
            for (name, report), share in zip(reports, prepared.shares, strict=True)]
    sampler = TokenBatchSampler(train.src_lengths + 1, train.tgt_lengths + 1, max_tokens)
    summary["train"]["shortlist_counts"] = {  # what counting cost (0: cached)
        "pairs": prepared.counts().sentences,
        **{k: round(v, 3) for k, v in prepared.cooccurrence.items()}}
    summary["train"]["batches"] = len(sampler)
    summary["train"]["padding_ratio"] = round(padding_ratio(sampler), 4)
    return summary

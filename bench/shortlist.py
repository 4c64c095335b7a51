"""The shortlist table's cost at scale: ``shortlist.build`` over N pairs of joined
Multi30k lines (1-3 random training pairs a line, both sides alike).

    python bench/shortlist.py [--pairs 1000000] [hydra overrides of conf/prepare.yaml]

Prepares Multi30k en->de as training does (the cache under data.root is reused), joins
its encoded training pairs into ``--pairs`` lines in memory, then times ``build`` with
the training defaults (per_source 20, frequent 100) and reads the process's peak RSS.
The last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.data.datamodule import NMTDataModule  # noqa: E402
from nmt.data.dataset import ParallelDataset  # noqa: E402
from nmt.decoding.shortlist import build  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def joined(ids: np.ndarray, offsets: np.ndarray, picks: np.ndarray, per_line: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Sentences ``picks`` laid end to end, ``per_line`` of them a line: (ids, offsets)."""
    lengths = np.diff(offsets)[picks]
    ends = np.cumsum(lengths)
    index = np.repeat(offsets[:-1][picks] - (ends - lengths), lengths) + np.arange(ends[-1])
    line_ends = ends[np.cumsum(per_line) - 1]
    return np.asarray(ids)[index], np.concatenate([[0], line_ends]).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    args, overrides = parser.parse_known_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=overrides)
    dm = NMTDataModule(OmegaConf.to_container(cfg.data, resolve=True),
                       OmegaConf.to_container(cfg.tokenizer, resolve=True))
    dm.prepare_data()
    dm.setup("fit")
    train = dm.dataset("train")
    assert isinstance(train, ParallelDataset) and dm.prepared is not None
    rng = np.random.default_rng(1)
    per_line = rng.integers(1, 4, args.pairs)
    picks = rng.integers(0, len(train), int(per_line.sum()))
    src = joined(train.src_ids, train.src_offsets, picks, per_line)
    tgt = joined(train.tgt_ids, train.tgt_offsets, picks, per_line)
    before = peak_rss_gb()
    start = time.perf_counter()
    table = build(src, tgt, dm.prepared.src_tokenizer.vocab_size,
                  dm.prepared.tgt_tokenizer.vocab_size)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "pairs": args.pairs, "tokens": int(len(src[0]) + len(tgt[0])),
        "build_s": round(seconds, 1), "pairs_per_s": round(args.pairs / seconds),
        "peak_rss_before_build_gb": round(before, 2), "peak_rss_gb": round(peak_rss_gb(), 2),
        "table_entries": int((table.table >= 0).sum()), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()

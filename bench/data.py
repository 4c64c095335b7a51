"""Data preparation benchmark: Multi30k en->de from raw files to batches.

    python bench/data.py [hydra overrides, e.g. tokenizer.vocab_size=16000 max_tokens=8000]

Cold: an empty cache directory, so the tokenizer is trained and every split
encoded; warm: the same again, everything cached. Both end with one epoch of
padded training batches built by the DataLoader. The last line printed is one
JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.data.corpus import read_parallel  # noqa: E402
from nmt.data.datamodule import NMTDataModule  # noqa: E402
from nmt.data.prepare import padding_ratio  # noqa: E402


def to_batches(data: dict, tokenizer: dict, max_tokens: int) -> tuple[NMTDataModule, int]:
    dm = NMTDataModule(data, tokenizer, max_tokens=max_tokens)
    dm.prepare_data()
    dm.setup("fit")
    n = sum(1 for _ in dm.train_dataloader())
    return dm, n


def main() -> None:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=sys.argv[1:])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    tokenizer = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        data["root"] = tmp
        start = time.perf_counter()
        dm, n_batches = to_batches(data, tokenizer, cfg.max_tokens)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        dm, n_batches = to_batches(data, tokenizer, cfg.max_tokens)
        warm = time.perf_counter() - start

        prepared = dm.prepared
        files = prepared.files["train"]
        src, tgt = zip(*read_parallel(files.src, files.tgt), strict=True)
        start = time.perf_counter()
        prepared.src_tokenizer.encode(list(src))
        prepared.tgt_tokenizer.encode(list(tgt))
        encode_s = time.perf_counter() - start

        result = {
            "data": data["name"],
            "train_pairs": len(dm.dataset("train")),
            "vocab_size": prepared.tgt_tokenizer.vocab_size,
            "max_tokens": cfg.max_tokens,
            "batches": n_batches,
            "prepare_cold_s": round(cold, 3),
            "prepare_warm_s": round(warm, 3),
            "encode_sentences_per_s": round(2 * len(src) / encode_s),
            "padding_ratio": round(padding_ratio(dm.train_sampler()), 4),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

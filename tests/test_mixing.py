"""Several training corpora mixed by weight: shares, the realized mix of an epoch, their
caches (a new weight re-encodes nothing), ranks, and the config's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_TOKENIZER, files_config, toy_pairs, write_pairs

from nmt.core.errors import ConfigError
from nmt.data.datamodule import NMTDataModule
from nmt.data.mixing import CorpusSpec, MixedDataset, counts, shares, weighted_sample
from nmt.data.prepare import prepare
from nmt.data.sampler import TokenBatchSampler
from nmt.data.summary import describe


def test_shares_by_weight_temperature_or_size():
    assert shares([100, 900], [3.0, 1.0], None).tolist() == [0.75, 0.25]
    assert shares([100, 900], [None, None], None).tolist() == [0.1, 0.9]
    hot = shares([100, 900], [None, None], 5.0)  # p ~ (n/N) ** (1/T): flatter
    expected = np.array([0.1, 0.9]) ** 0.2
    assert np.allclose(hot, expected / expected.sum()) and 0.1 < hot[0] < 0.5
    assert shares([0, 10], [1.0, 1.0], None).tolist() == [0.0, 1.0]  # nothing to draw
    assert counts(10, np.array([0.34, 0.33, 0.33])).tolist() == [4, 3, 3]


@pytest.mark.parametrize(("sizes", "weights", "temperature", "match"), [
    ([1, 2], [1.0, 1.0], 2.0, "both set"), ([1, 2], [None, None], 0.0, "must be positive"),
    ([0, 0], [None, None], None, "keep no training pair"),
])
def test_bad_mixes_are_refused(sizes, weights, temperature, match):
    with pytest.raises(ConfigError, match=match):
        shares(sizes, weights, temperature)


@pytest.mark.parametrize(("entries", "match"), [
    ([{"src": "a", "tgt": "b", "weight": 1}, {"src": "c", "tgt": "d"}], "every corpus a weight"),
    ([{"src": "a", "tgt": "b", "weight": -1}], r"corpora\[0\]\.weight must be a positive"),
    ([{"src": "a", "tgt": "b", "name": "x"}, {"src": "c", "tgt": "d", "name": "x"}], "repeat"),
    ([{"src": "a", "tgt": "b", "wieght": 2}], r"unknown key\(s\) \['wieght'\]"),
    ([{"src": "a"}], r"corpora\[0\]\.tgt is not set"),
])
def test_bad_corpus_lists_are_refused(entries, match):
    with pytest.raises(ConfigError, match=match):
        CorpusSpec.parse(entries)


class Corpus:
    """A stand-in for an encoded corpus: lengths only."""

    def __init__(self, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.src_lengths = rng.integers(1, 30, n)
        self.tgt_lengths = rng.integers(1, 30, n)

    def __len__(self) -> int:
        return len(self.src_lengths)


def test_an_epoch_realizes_the_weights():
    big, small = Corpus(20_000, 0), Corpus(500, 1)
    mixed = MixedDataset([("web", big), ("domain", small)], np.array([0.7, 0.3]), seed=3)
    seen_small, big_draws = [], []
    for epoch in range(3):
        examples = mixed.epoch_examples(epoch)
        assert len(examples) == 20_500
        assert np.allclose(mixed.realized(examples), [0.7, 0.3], atol=0.01)
        big_draws.append(examples[examples < 20_000])
        seen_small.append(np.bincount(examples[examples >= 20_000] - 20_000, minlength=500))
    # The small corpus repeats 12.3 times an epoch (whole rounds of permutations and parts
    # of two): every pair 11 to 14 times, and 36 to 38 times in three epochs (36.9 rounds).
    assert all(s.sum() == 6150 and s.min() >= 11 and s.max() <= 14 for s in seen_small)
    assert 36 <= sum(seen_small).min() <= sum(seen_small).max() <= 38
    # The big one (0.7 x 20,500 = 14,350 a epoch) goes through its permutations: no repeat
    # in the first epoch, every pair once or twice in the first two.
    assert len(np.unique(big_draws[0])) == len(big_draws[0])
    twice = np.bincount(np.concatenate(big_draws[:2]), minlength=20_000)
    assert twice.min() == 1 and twice.max() == 2


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_ranks_share_a_mixed_epoch(world):
    mixed = MixedDataset([("a", Corpus(900, 0)), ("b", Corpus(77, 1))], np.array([0.5, 0.5]),
                         seed=1)
    samplers = [TokenBatchSampler(mixed.src_lengths + 1, mixed.tgt_lengths + 1, 400,
                                  seed=1, num_replicas=world, rank=r,
                                  epoch_examples=mixed.epoch_examples) for r in range(world)]
    for epoch in (0, 1):
        for s in samplers:
            s.set_epoch(epoch)
        assert len({len(s) for s in samplers}) == 1  # the same number of steps
        used = np.concatenate([np.concatenate(list(s)) for s in samplers])
        assert np.array_equal(np.sort(used), np.sort(mixed.epoch_examples(epoch)))


def two_corpora(tmp_path: Path, weights: tuple[float, float]) -> dict:
    d = tmp_path / "raw"
    if not d.is_dir():  # written once: a file written again is new data to the cache
        d.mkdir()
        for name, n, seed in (("web", 400, 11), ("domain", 60, 12), ("valid", 20, 13)):
            write_pairs(d, name, toy_pairs(n, seed=seed))
    big, small, valid = ({"src": str(d / f"{name}.en"), "tgt": str(d / f"{name}.de")}
                         for name in ("web", "domain", "valid"))
    cfg = files_config(d, tmp_path / "cache", clean={"dedup": False})
    cfg["files"] = {"valid": valid}
    cfg["corpora"] = [{**big, "name": "web", "weight": weights[0]},
                      {**small, "name": "domain", "weight": weights[1]}]
    return cfg


def test_a_new_weight_re_encodes_nothing(tmp_path):
    first = prepare(two_corpora(tmp_path, (1.0, 1.0)), TOY_TOKENIZER)
    assert isinstance(first.datasets["train"], MixedDataset)
    assert [name for name, _ in first.corpora] == ["web", "domain"]
    assert len(first.datasets["train"]) == 460 and first.shares == [0.5, 0.5]
    again = prepare(two_corpora(tmp_path, (4.0, 1.0)), TOY_TOKENIZER)
    assert again.encoded_sentences == 0 and again.shares == [0.8, 0.2]
    assert again.src_tokenizer == first.src_tokenizer
    assert [ds.directory for _, ds in again.corpora] == [ds.directory for _, ds in first.corpora]
    # The shortlist's counts: both corpora's, summed.
    assert again.counts().sentences == 460
    summary = describe(again, max_tokens=400)["train"]
    assert summary["pairs"] == 460 and summary["clean"]["kept"] == 460
    assert summary["shortlist_counts"]["pairs"] == 460
    assert [(c["name"], c["pairs"], c["share"]) for c in summary["corpora"]] == [
        ("web", 400, 0.8), ("domain", 60, 0.2)]


def test_corpora_and_files_train_are_not_both_set(tmp_path):
    cfg = two_corpora(tmp_path, (1.0, 1.0))
    cfg["files"]["train"] = cfg["corpora"][0]
    with pytest.raises(ConfigError, match=r"data\.corpora or data\.files\.train, not both"):
        prepare(cfg, TOY_TOKENIZER)


def test_the_data_module_batches_the_mix(tmp_path):
    dm = NMTDataModule(two_corpora(tmp_path, (1.0, 3.0)), TOY_TOKENIZER, max_tokens=300)
    dm.setup("fit")
    mixed = dm.dataset("train")
    assert isinstance(mixed, MixedDataset)
    indices = np.concatenate([b.indices.numpy() for b in dm.train_dataloader()])
    assert len(indices) == 460
    assert np.allclose(mixed.realized(indices), [0.25, 0.75], atol=0.01)
    with pytest.raises(ConfigError, match="one training corpus only"):
        NMTDataModule(two_corpora(tmp_path, (1.0, 3.0)),
                      {**TOY_TOKENIZER, "sampling": {"enabled": True}}).train_dataset()


def test_the_tokenizer_sample_follows_the_weights(tmp_path):
    a = write_pairs(tmp_path, "a", [(f"a{k}", f"x{k}") for k in range(3000)])
    b = write_pairs(tmp_path, "b", [(f"b{k}", f"y{k}") for k in range(100)])
    files = [(Path(a["src"]), Path(a["tgt"])), (Path(b["src"]), Path(b["tgt"]))]
    lines = list(weighted_sample(files, np.array([0.25, 0.75]), 2000, seed=1, sides=(0, 1)))
    from_b = sum(line[0] in "by" for line in lines) / len(lines)
    assert abs(len(lines) - 4000) < 150 and abs(from_b - 0.75) < 0.02
    # The small corpus is taken 15 times over, the big one in part (a sixth of it).
    assert sum(line == "b7" for line in lines) == 15
    assert 400 < sum(line[0] == "a" for line in lines) < 600

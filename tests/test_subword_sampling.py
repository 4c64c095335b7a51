"""Subword regularisation: sampled training segmentations, reproducible from the seed."""

from __future__ import annotations

import itertools
import json
import logging
import pickle
import re
import subprocess
import sys
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from conftest import TOY_TOKENIZER, files_config, toy_pairs
from torch.utils.data import DataLoader
from train_helpers import ROOT, compose_train, fit_recorded, toy_overrides

from nmt.core.errors import ConfigError, DataError, TokenizerError
from nmt.data import subword_sampling
from nmt.data.datamodule import CaptionDataModule, NMTDataModule
from nmt.data.dataset import ParallelDataset, collate
from nmt.data.sampler import TokenBatchSampler
from nmt.data.subword_sampling import SampledDataset, SubwordSampler
from nmt.data.tokenizer import SamplingConfig, TokenizerConfig

SAMPLING = {**TOY_TOKENIZER, "sampling": {"enabled": True, "alpha": 0.2, "nbest": -1}}


def sampled(prepared, seed: int = 1, **options) -> SampledDataset:
    sampling = SamplingConfig(**{**SAMPLING["sampling"], **options})
    return SampledDataset(prepared.datasets["train"], prepared.files["train"],
                          prepared.src_tokenizer, prepared.tgt_tokenizer, sampling, seed)


def items(ds) -> list[tuple[list[int], list[int]]]:
    return [(s.tolist(), t.tolist()) for _, s, t in ds.__getitems__(list(range(len(ds))))]


def batches(loader: DataLoader) -> list[list[torch.Tensor]]:
    return [[t for t in batch if t is not None] for batch in loader]


# --- the sampled segmentation ---------------------------------------------------------------


def test_same_seed_and_epoch_give_the_same_ids(toy_prepared):
    a, b = sampled(toy_prepared), sampled(toy_prepared)
    a.row_lengths(0)
    first = items(a)
    a.row_lengths(1)  # other draws in between change nothing
    b.row_lengths(3)
    b.row_lengths(0)
    a.row_lengths(0)
    assert items(a) == items(b) == first


def test_a_fresh_process_draws_the_same_ids(toy_prepared, tmp_path):
    texts = sampled(toy_prepared).texts[0][:50]
    toy_prepared.src_tokenizer.save(tmp_path / "toy.model")
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    # The sampler's module alone: the package's __init__ (lightning) takes seconds.
    script = "; ".join([
        "import json, sys, types, numpy as np", "nmt = types.ModuleType('nmt')",
        f"nmt.__path__ = [{str(ROOT / 'nmt')!r}]", "sys.modules['nmt'] = nmt",
        "from nmt.data.tokenizer import Tokenizer",
        "from nmt.data.subword_sampling import SubwordSampler",
        f"sampler = SubwordSampler(Tokenizer.load({str(tmp_path / 'toy.model')!r}), 0.2, -1)",
        f"texts = json.load(open({str(tmp_path / 'texts.json')!r}))",
        "rng = np.random.default_rng([1, 5, 0])",
        "print(json.dumps([sampler.sample(t, rng) for t in texts]))"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    sampler = SubwordSampler(toy_prepared.src_tokenizer, 0.2, -1)
    rng = np.random.default_rng([1, 5, 0])
    assert json.loads(result.stdout) == [sampler.sample(t, rng) for t in texts]


def test_epochs_and_seeds_give_other_segmentations(toy_prepared):
    ds = sampled(toy_prepared)
    ds.row_lengths(0)
    epoch0 = items(ds)
    ds.row_lengths(1)
    assert items(ds) != epoch0
    other = sampled(toy_prepared, seed=2)
    other.row_lengths(0)
    assert items(other) != epoch0


@pytest.mark.parametrize("nbest", [-1, 8])
def test_sampled_segmentation_decodes_to_the_text(toy_prepared, nbest):
    ds = sampled(toy_prepared, alpha=0.1, nbest=nbest)
    ds.row_lengths(0)
    base = toy_prepared.datasets["train"]
    src_tok, tgt_tok = toy_prepared.src_tokenizer, toy_prepared.tgt_tokenizer
    sampled_items = items(ds)
    assert sampled_items != items(base)  # not the deterministic segmentation
    assert src_tok.decode([s for s, _ in sampled_items]) == src_tok.decode(
        [s for s, _ in items(base)])
    assert tgt_tok.decode([t for _, t in sampled_items]) == list(ds.texts[1])
    assert ds.piece_ratios()[0] > 1.0  # more, shorter pieces than the best segmentation


def test_the_lattice_is_sentencepieces(toy_prepared):
    """Our lattice's best path is SentencePiece's segmentation, unknown characters and
    odd spacing included; n-best draws are among SentencePiece's n best."""
    tok = toy_prepared.src_tokenizer
    texts = [t for pair in toy_pairs(200, seed=7) for t in pair]
    texts += ["", "  a  man ζζ sees  日本 ", "ζ", "Zwei\tKinder"]
    lattice = SubwordSampler(tok, 0.5, -1)
    assert [lattice.best(t) for t in texts] == tok.encode(texts)
    nbest = SubwordSampler(tok, 0.5, 4)
    rng = np.random.default_rng(0)
    for text in texts[:20]:
        assert nbest.sample(text, rng) in tok.sp.nbest_encode(text, nbest_size=4, out_type=int)


def test_lattice_draws_follow_the_model(toy_prepared):
    """The segmentations' probabilities are p ** alpha, normalized: the larger alpha, the
    more often the best segmentation is drawn."""
    tok = toy_prepared.src_tokenizer
    text = "Two children find the red car at the beach ."
    best = tok.encode([text])[0]
    shares = []
    for alpha in (1.0, 0.3, 0.1):
        sampler, rng = SubwordSampler(tok, alpha, -1), np.random.default_rng(0)
        shares.append(np.mean([sampler.sample(text, rng) == best for _ in range(300)]))
    assert shares[0] > shares[1] > shares[2]


# --- batches --------------------------------------------------------------------------------


def test_batches_are_packed_by_the_sampled_lengths(toy_data_cfg, toy_prepared, caplog):
    dm = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3)
    with caplog.at_level(logging.INFO, logger="nmt.data.subword_sampling"):
        loader = dm.train_dataloader()
    ds = dm.train_dataset()
    assert isinstance(ds, SampledDataset) and not loader.persistent_workers
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        assert ds.epoch == epoch
        seen = []
        for batch in loader:
            assert batch.src.numel() + batch.tgt_in.numel() <= 300 or len(batch.indices) == 1
            for row, i in enumerate(batch.indices.tolist()):
                _, src, tgt = ds[i]
                assert batch.src[row, : len(src)].tolist() == src.tolist()
                assert batch.tgt_out[row, : len(tgt)].tolist() == tgt.tolist()
            seen.extend(batch.indices.tolist())
        assert sorted(seen) == list(range(len(ds)))
    # Said once: how many more pieces the sampled segmentation has (to choose max_tokens).
    [said] = [r.getMessage() for r in caplog.records if "the source pieces" in r.getMessage()]
    assert re.search(r"alpha 0\.2, nbest -1\): 1\.\d\dx the source pieces and 1\.\d\dx", said)


def test_workers_serve_the_epoch_being_trained(toy_data_cfg, toy_prepared):
    main = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3)
    forked = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3, num_workers=1)
    loaders = main.train_dataloader(), forked.train_dataloader()
    for epoch in (0, 1):
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
        expected, got = (batches(loader) for loader in loaders)
        assert len(expected) == len(got)
        for a, b in zip(expected, got, strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_a_pickled_copy_serves_the_same_items(toy_prepared):
    ds = sampled(toy_prepared)
    ds.row_lengths(2)
    copy = pickle.loads(pickle.dumps(ds))
    assert items(copy) == items(ds) and copy.texts == ([], [])


def test_resumed_sampler_sees_the_same_segmentation(toy_data_cfg, toy_prepared):
    run = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3)
    loader = run.train_dataloader()
    loader.batch_sampler.set_epoch(2)
    expected = batches(loader)
    state = loader.batch_sampler.state_dict(consumed=4)
    resumed = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3)
    resumed.load_state_dict(state)
    got = batches(resumed.train_dataloader())
    assert len(got) == len(expected) - 4
    for a, b in zip(expected[4:], got, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_validation_is_the_same_with_sampling_on_and_off(toy_data_cfg, toy_prepared):
    off = NMTDataModule(toy_data_cfg, TOY_TOKENIZER, max_tokens=300, seed=3)
    on = NMTDataModule(toy_data_cfg, SAMPLING, max_tokens=300, seed=3)
    on.train_dataloader().batch_sampler.set_epoch(1)  # sampling has run
    for split in ("valid", "test"):
        a, b = batches(off.eval_dataloader(split)), batches(on.eval_dataloader(split))
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert all(torch.equal(s, t) for s, t in zip(x, y, strict=True))
    assert on.prepared.src_tokenizer == off.prepared.src_tokenizer  # one cached model


def test_off_by_default_gives_the_deterministic_batches(toy_data_cfg, toy_prepared):
    assert not TokenizerConfig().sampling.enabled
    dm = NMTDataModule(toy_data_cfg, TOY_TOKENIZER, max_tokens=300, seed=3, num_workers=1)
    loader = dm.train_dataloader()
    ds = toy_prepared.datasets["train"]
    assert isinstance(loader.dataset, ParallelDataset) and loader.persistent_workers
    before = TokenBatchSampler(ds.src_lengths + 1, ds.tgt_lengths + 1, 300, seed=3)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        assert [b.tolist() for b in loader.batch_sampler.batches()] == [
            b.tolist() for b in before.batches(epoch)]
    indices = list(range(8))
    assert torch.equal(collate(loader.dataset.__getitems__(indices)).src,
                       collate(ds.__getitems__(indices)).src)


def test_sampling_options_leave_the_tokenizer_cache_key_alone():
    # The key of the default settings since character_coverage became auto (with 1.0, the
    # key cached models had before); sampling leaves it alone.
    assert TokenizerConfig(character_coverage=1.0).key("abc") == "d6e9601996cdc1ac"
    assert TokenizerConfig().key("abc") == "d84d7ea3f6321f4f"
    assert TokenizerConfig(sampling={"enabled": True, "alpha": 0.5}).key("abc") == (
        "d84d7ea3f6321f4f")


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "match"), [
    ({"alpha": 0}, r"tokenizer\.sampling\.alpha must be in \(0, 1\], got 0"),
    ({"alpha": 1.5}, r"tokenizer\.sampling\.alpha must be in \(0, 1\], got 1\.5"),
    ({"nbest": 1}, r"tokenizer\.sampling\.nbest must be -1 \(the whole lattice\) or 2\.\.512"),
    ({"nbest": 513}, r"tokenizer\.sampling\.nbest must be .*got 513"),
    ({"beta": 1}, r"tokenizer\.sampling: unknown key\(s\) \['beta'\]; valid keys: enabled, "),
    ({"enabled": True, "model": "bpe"}, r"tokenizer\.sampling needs model_type=unigram "
                                        r"\(segmentations with probabilities\), not bpe"),
])
def test_bad_options_are_one_line_errors(options, match):
    sampling = {k: v for k, v in options.items() if k != "model"}
    with pytest.raises(TokenizerError, match=match) as error:
        TokenizerConfig(model_type=options.get("model", "unigram"), sampling=sampling)
    assert "\n" not in str(error.value)


def test_a_corpus_too_big_to_sample_is_refused_at_start(toy_prepared, monkeypatch):
    monkeypatch.setattr(subword_sampling, "MAX_PAIRS", 100)
    with pytest.raises(DataError, match=r"600 training pairs; subword sampling holds the text"):
        sampled(toy_prepared)


def test_bad_options_fail_at_composition_and_captioning_refuses():
    from nmt.cli.config import check_overrides

    with pytest.raises(ConfigError, match=r"tokenizer\.sampling\.alpah: unknown key; valid "
                                          r"keys: alpha, enabled, nbest"):
        check_overrides("train", ["tokenizer.sampling.alpah=0.1"])
    cfg = check_overrides("train", ["tokenizer.sampling.enabled=true"])
    assert cfg.tokenizer.sampling.alpha == 0.2 and cfg.tokenizer.sampling.nbest == -1
    with pytest.raises(ConfigError, match=r"tokenizer\.sampling: captioning trains on the "):
        CaptionDataModule({"name": "shapes", "format": "shapes"},
                          {"model_type": "unigram", "sampling": {"enabled": True}},
                          image=None, cells=1)


# --- training -------------------------------------------------------------------------------


class SourceRecorder(L.Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[list[int], list[list[int]]]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append((batch.indices.tolist(), batch.src.tolist()))


def test_training_with_sampling_is_reproducible(toy_dir, tmp_path, one_thread):
    cfg = files_config(toy_dir, tmp_path / "cache")
    runs = []
    for name in ("a", "b"):
        args = [*toy_overrides(cfg, tmp_path / name), "tokenizer.sampling.enabled=true",
                "trainer.max_steps=3", "trainer.num_sanity_val_steps=0"]
        recorder = SourceRecorder()
        L.seed_everything(1, workers=True, verbose=False)
        _, trainer = fit_recorded(compose_train(args), callbacks=[recorder])
        runs.append((recorder.batches, trainer.lightning_module.state_dict(),
                     float(trainer.callback_metrics["train/loss"])))
    (batches_a, weights_a, loss_a), (batches_b, weights_b, loss_b) = runs
    assert len(batches_a) == 3 and batches_a == batches_b and loss_a == loss_b
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # What was trained on is the sampled segmentation of epoch 0.
    dm = trainer.datamodule
    assert dm.train_dataset().epoch == 0
    indices, src = batches_a[0]
    assert src == collate(dm.train_dataset().__getitems__(indices)).src.tolist()
    assert src != collate(dm.dataset("train").__getitems__(indices)).src.tolist()


def test_resumed_training_sees_the_same_segmentation(toy_dir, tmp_path, one_thread):
    cfg = files_config(toy_dir, tmp_path / "cache")

    def run(name: str, *more: str, crash_at: int | None = None) -> tuple[list, list]:
        args = [*toy_overrides(cfg, tmp_path / name), "tokenizer.sampling.enabled=true",
                "batching.max_tokens=3000", "trainer.max_steps=20", "+trainer.limit_val_batches=0",
                "optim.scheduler=null", "callbacks.every_n_train_steps=8", *more]
        sources = SourceRecorder()
        steps, _ = fit_recorded(compose_train(args), crash_at=crash_at, callbacks=[sources])
        return steps.steps, sources.batches

    _, full = run("full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run("part", crash_at=17)  # last.ckpt is from step 16
    steps, resumed = run("part", "ckpt_path=last")
    assert [epoch for epoch, _, _ in steps] == [1] * 4  # resumed in the second epoch (14 steps)
    assert len(full) == 20 and resumed == full[16:]


class ValidationRecorder(L.Callback):
    def __init__(self) -> None:
        self.at: list[tuple[int, int]] = []  # (epoch, global step) of each validation

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.at.append((trainer.current_epoch, trainer.global_step))


def test_every_sampled_epoch_is_trained_to_its_end_and_validated(toy_dir, tmp_path,
                                                                   one_thread):
    """Sampled epochs differ in their number of batches. Lightning keeps the length of
    the loader it holds: each epoch's loader is asked for anew, so every epoch is
    trained to its end and none goes without its validation."""
    cfg = files_config(toy_dir, tmp_path / "cache")
    args = [*toy_overrides(cfg, tmp_path / "run"), "tokenizer.sampling.enabled=true",
            "tokenizer.sampling.alpha=0.1", "trainer.max_epochs=4",
            "+trainer.limit_val_batches=1", "trainer.num_sanity_val_steps=0",
            "optim.scheduler=null"]
    validations = ValidationRecorder()
    steps, trainer = fit_recorded(compose_train(args), callbacks=[validations])
    sampler = trainer.datamodule._train_sampler
    lengths = [len(sampler.rank_batches(epoch)) for epoch in range(4)]
    assert len(set(lengths)) > 1  # the epochs do differ in length
    trained = Counter(epoch for epoch, _, _ in steps.steps)
    assert [trained[epoch] for epoch in range(4)] == lengths
    ends = list(itertools.accumulate(lengths))
    assert validations.at == [(epoch, ends[epoch]) for epoch in range(4)]


def test_epochs_of_one_length_keep_the_first_loader(toy_dir, tmp_path, one_thread):
    """Without sampling the loader is built once, as before; with it, a trainer setting
    that would keep one loader for several epochs is refused in one line."""
    cfg = files_config(toy_dir, tmp_path / "cache")
    from nmt.training.train import build, run_dir_of

    base = [*toy_overrides(cfg, tmp_path / "run"), "trainer.max_epochs=1"]
    _, _, trainer = build(compose_train(base), run_dir_of(compose_train(base)))
    assert trainer.reload_dataloaders_every_n_epochs == 0
    sampling = [*base, "tokenizer.sampling.enabled=true"]
    _, _, trainer = build(compose_train(sampling), run_dir_of(compose_train(sampling)))
    assert trainer.reload_dataloaders_every_n_epochs == 1
    with pytest.raises(ConfigError, match="reload_dataloaders_every_n_epochs=2: subword"):
        args = [*sampling, "+trainer.reload_dataloaders_every_n_epochs=2"]
        build(compose_train(args), run_dir_of(compose_train(args)))


@pytest.mark.slow
def test_ddp_ranks_segment_alike(toy_dir, tmp_path):
    """Two processes (gloo on CPU) pack the same sampled epoch: their batches cover every
    example exactly once."""
    cfg = files_config(toy_dir, tmp_path / "cache")
    out = tmp_path / "ranks"
    out.mkdir()
    args = [*toy_overrides(cfg, tmp_path / "run"), "tokenizer.sampling.enabled=true",
            "batching.max_tokens=3000", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.strategy=ddp", "trainer.max_epochs=1", "+trainer.limit_val_batches=0",
            "optim.scheduler=null"]
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "train_helpers.py"), str(out),
                             *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    seen = [[i for _, _, idx in r["steps"] for i in idx] for r in ranks]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"])
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(600))

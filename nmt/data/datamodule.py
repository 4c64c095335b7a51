"""The LightningDataModule: train/valid/test dataloaders over token-budget batches."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from nmt.core.errors import ConfigError
from nmt.data.captioning import (
    CaptionCollate,
    CaptionDataConfig,
    CaptionDataset,
    FeatureEncoder,
    ImageSettings,
    PreparedCaptions,
    cache_features,
    prepare_captions,
)
from nmt.data.corpus import read_lines
from nmt.data.dataset import Batch, ParallelDataset, collate
from nmt.data.mixing import MixedDataset
from nmt.data.prepare import DataConfig, PreparedData, from_dict, prepare
from nmt.data.sampler import TokenBatchSampler
from nmt.data.subword_sampling import SampledDataset
from nmt.data.tokenizer import Tokenizer, TokenizerConfig


class NMTDataModule(L.LightningDataModule):
    """Train/valid/test dataloaders over token-budget batches.

    ``prepare_data`` (run once per machine by Lightning) fills the cache;
    ``setup`` (every process) loads it. ``tokenizers`` (source, target; a checkpoint's,
    to fine-tune it) encode the data instead of those ``tokenizer`` would train.
    """

    def __init__(self, data: Mapping[str, Any], tokenizer: Mapping[str, Any],
                 max_tokens: int = 4096, eval_max_tokens: int | None = None,
                 num_workers: int = 0, seed: int = 1,
                 tokenizers: tuple[Tokenizer, Tokenizer] | None = None) -> None:
        super().__init__()
        self.data_cfg = data if isinstance(data, DataConfig) else from_dict(DataConfig, data,
                                                                          "data")
        self.tokenizer_cfg = (tokenizer if isinstance(tokenizer, TokenizerConfig)
                              else from_dict(TokenizerConfig, tokenizer, "tokenizer"))
        self.data_cfg.check()
        self._batching(max_tokens, eval_max_tokens, num_workers, seed)
        self.tokenizers = tokenizers
        self.prepared: PreparedData | None = None
        self._references: dict[str, list[str]] = {}

    def _batching(self, max_tokens: int, eval_max_tokens: int | None, num_workers: int,
                  seed: int) -> None:
        """The loaders' settings, and no training position yet."""
        if max_tokens <= 0:
            raise ConfigError(f"max_tokens must be positive, got {max_tokens}")
        self.max_tokens = max_tokens
        self.eval_max_tokens = eval_max_tokens or 2 * max_tokens
        self.num_workers = num_workers
        self.seed = seed
        self._train_sampler: TokenBatchSampler | None = None
        self._resume_state: dict[str, int] | None = None
        self._sampled: SampledDataset | None = None

    def references(self, split: str) -> list[str]:
        """The raw target lines of a split (dev/test are never filtered, so line i is example i)."""
        if split not in self._references:
            self.dataset(split)  # prepares the data if needed; checks the split exists
            assert self.prepared is not None
            tgt = self.prepared.files[split].tgt
            self._references[split] = list(read_lines(tgt, allow_empty=True))
        return self._references[split]

    def state_dict(self) -> dict[str, int]:
        """Where the training data order stands: saved in every checkpoint by Lightning."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or self._train_sampler is None:
            return {}
        consumed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return self._train_sampler.state_dict(consumed=consumed)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_state = state or None
        if self._resume_state is not None:
            # Lightning warns on a mid-epoch resume unless the DataLoader itself has a
            # state_dict; the position is restored here instead (the sampler skips the
            # batches done), so the warning would be false.
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable")

    def prepare_data(self) -> None:
        prepare(self.data_cfg, self.tokenizer_cfg, self.seed, self.tokenizers)

    def setup(self, stage: str | None = None) -> None:
        if self.prepared is None:
            self.prepared = prepare(self.data_cfg, self.tokenizer_cfg, self.seed,
                                    self.tokenizers)

    def _world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: ParallelDataset | MixedDataset | CaptionDataset | SampledDataset,
                sampler: TokenBatchSampler) -> DataLoader:
        # Its own generator: a DataLoader otherwise draws its workers' base seed from the
        # global RNG each time it is iterated, and a run resumed at an epoch boundary
        # would then draw different dropout masks than one that never stopped.
        # Workers copy the dataset when they start: persistent ones would keep serving
        # the first epoch's segmentation of a SampledDataset.
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                          num_workers=self.num_workers,
                          persistent_workers=(self.num_workers > 0
                                              and not isinstance(dataset, SampledDataset)),
                          generator=torch.Generator().manual_seed(self.seed))

    def collate_fn(self, examples: list[Any]) -> Batch:
        return collate(examples)

    def has_split(self, split: str) -> bool:
        self.setup()
        assert self.prepared is not None
        return split in self.prepared.datasets

    def dataset(self, split: str) -> ParallelDataset | MixedDataset | CaptionDataset:
        if self.prepared is None:
            self.setup()
        assert self.prepared is not None
        if split not in self.prepared.datasets:
            raise ConfigError(f"data: no {split} split configured")
        return self.prepared.datasets[split]

    def train_dataset(self) -> ParallelDataset | MixedDataset | CaptionDataset | SampledDataset:
        """The training examples; with ``tokenizer.sampling``, segmented anew every epoch
        (nmt.data.subword_sampling)."""
        ds = self.dataset("train")
        if not self.tokenizer_cfg.sampling.enabled:
            return ds
        if self._sampled is None:
            assert self.prepared is not None
            if not isinstance(ds, ParallelDataset):
                raise ConfigError("tokenizer.sampling: one training corpus only, not a list of "
                                  "them; set tokenizer.sampling.enabled=false")
            self._sampled = SampledDataset(ds, self.prepared.files["train"],
                                           self.prepared.src_tokenizer,
                                           self.prepared.tgt_tokenizer,
                                           self.tokenizer_cfg.sampling, self.seed)
        return self._sampled

    def train_sampler(self) -> TokenBatchSampler:
        ds = self.train_dataset()
        world, rank = self._world()
        sampler = TokenBatchSampler(
            ds.src_lengths + 1, ds.tgt_lengths + 1, self.max_tokens, shuffle=True,
            seed=self.seed, num_replicas=world, rank=rank,
            epoch_lengths=ds.row_lengths if isinstance(ds, SampledDataset) else None,
            epoch_examples=ds.epoch_examples if isinstance(ds, MixedDataset) else None)
        if self._resume_state is not None:
            sampler.load_state_dict(self._resume_state)
            self._resume_state = None
        elif (trainer := getattr(self, "trainer", None)) is not None:
            # Asked anew every epoch with subword sampling (trainer_settings):
            # Lightning takes len() before it calls set_epoch, so set the epoch now.
            sampler.set_epoch(trainer.current_epoch)
        return sampler

    def trainer_settings(self, trainer_cfg: dict[str, Any]) -> dict[str, Any]:
        """The trainer config, asking for the training loader anew every epoch with
        subword sampling: Lightning decides where to validate from the length of the
        loader it holds, and sampled epochs differ by a batch or so (the shorter ones
        would end without a validation)."""
        if not self.tokenizer_cfg.sampling.enabled:
            return trainer_cfg
        given = trainer_cfg.get("reload_dataloaders_every_n_epochs", 1)
        if given != 1:
            raise ConfigError(f"trainer.reload_dataloaders_every_n_epochs={given}: subword "
                              "sampling needs the training loader of each epoch; leave it out")
        return {**trainer_cfg, "reload_dataloaders_every_n_epochs": 1}

    def train_dataloader(self) -> DataLoader:
        self._train_sampler = self.train_sampler()
        ds = self.train_dataset()
        if isinstance(ds, SampledDataset):
            # The epoch to start with (0, or a resumed one), segmented before the loader
            # starts its workers; set_epoch does the same for the epochs after it.
            self._train_sampler.batches()
        return self._loader(ds, self._train_sampler)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Sorted by length, not shuffled; batches carry ``indices`` to restore order."""
        ds = self.dataset(split)
        world, rank = self._world()
        sampler = TokenBatchSampler(ds.src_lengths + 1, ds.tgt_lengths + 1,
                                    self.eval_max_tokens, shuffle=False,
                                    num_replicas=world, rank=rank)
        return self._loader(ds, sampler)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")


class CaptionDataModule(NMTDataModule):
    """The same loaders over images and their captions (nmt.data.captioning).

    Batches are of caption tokens (``max_tokens``, padding included); each image
    enters as normalised pixels, or as its cached features once ``use_encoder`` is
    given a frozen encoder. ``caption_tokenizer`` (a checkpoint's, to fine-tune it)
    encodes the captions instead of one trained on them.
    """

    def __init__(self, data: Mapping[str, Any], tokenizer: Mapping[str, Any],
                 image: ImageSettings, cells: int, max_tokens: int = 1024,
                 eval_max_tokens: int | None = None, num_workers: int = 0,
                 seed: int = 1, caption_tokenizer: Tokenizer | None = None) -> None:
        L.LightningDataModule.__init__(self)
        self.caption_cfg = from_dict(CaptionDataConfig, data, "data")
        self.caption_cfg.check()
        self.tokenizer_cfg = from_dict(TokenizerConfig, tokenizer, "tokenizer")
        if self.tokenizer_cfg.sampling.enabled:
            raise ConfigError("tokenizer.sampling: captioning trains on the captions' fixed "
                              "segmentation; set tokenizer.sampling.enabled=false")
        self._batching(max_tokens, eval_max_tokens, num_workers, seed)
        self.caption_tokenizer = caption_tokenizer
        self.image = image
        self.collate = CaptionCollate(image, cells)
        self.captions: PreparedCaptions | None = None
        self._encoder: FeatureEncoder | None = None

    def collate_fn(self, examples: list[Any]) -> Batch:
        return self.collate(examples)

    def has_split(self, split: str) -> bool:
        self.setup()
        assert self.captions is not None
        return split in self.captions.datasets

    def prepare_data(self) -> None:
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.captions is None:
            self.captions = prepare_captions(self.caption_cfg, self.tokenizer_cfg,
                                             self.image.size, self.caption_tokenizer)
            if self._encoder is not None:
                self._use_features(self._encoder)

    def use_encoder(self, encoder: FeatureEncoder) -> None:
        """Train on the cached features of ``encoder`` (frozen) instead of pixels."""
        self._encoder = encoder
        if self.captions is not None:
            self._use_features(encoder)

    def _use_features(self, encoder: FeatureEncoder) -> None:
        captions = self.captions
        assert captions is not None
        for split, pixels in list(captions.inputs.items()):
            captions.inputs[split] = cache_features(pixels, encoder, self.image,
                                                    self.caption_cfg.directory)
        captions.build_datasets()
        first = next(iter(captions.inputs.values()))
        self.collate = CaptionCollate(self.image, int(first.shape[1]))

    @property
    def tokenizer(self) -> Tokenizer:
        self.setup()
        assert self.captions is not None
        return self.captions.tokenizer

    def references(self, split: str) -> list[list[str]]:  # type: ignore[override]
        """All captions of each image of ``split``, in image order (example i is image i)."""
        self.dataset(split)
        assert self.captions is not None
        return self.captions.references(split)

    def train_sampler(self, seed: int | None = None) -> TokenBatchSampler:
        """Training batches of random images (not of similar caption lengths, as text
        batches are): BatchNorm in a CNN learns from batch statistics, which would
        otherwise differ by the number of shapes in an image. As many images as fit
        ``max_tokens`` caption tokens at the split's mean per image."""
        ds = self.dataset("train")
        world, rank = self._world()
        cost = np.full(len(ds), int(np.ceil(ds.tgt_lengths.mean())) + 1)
        sampler = TokenBatchSampler(np.ones(len(ds), dtype=np.int64), cost, self.max_tokens,
                                    shuffle=True, seed=self.seed if seed is None else seed,
                                    num_replicas=world, rank=rank)
        if self._resume_state is not None and seed is None:
            sampler.load_state_dict(self._resume_state)
            self._resume_state = None
        return sampler

    def calibration_batches(self, n: int) -> Iterator[Batch]:
        """``n`` training batches for recomputing BatchNorm statistics (callbacks.
        PreciseBatchNorm): the same on every rank, leaving the training order untouched."""
        sampler = self.train_sampler(seed=self.seed + 7919)
        for indices in itertools.islice(sampler.batches(0), n):
            yield self.collate_fn(self.dataset("train").__getitems__(list(indices)))

    def dataset(self, split: str) -> CaptionDataset:
        self.setup()
        assert self.captions is not None
        if split not in self.captions.datasets:
            raise ConfigError(f"data: no {split} split configured")
        return self.captions.datasets[split]


"""Captioning data: images with their captions, read once and cached.

``prepare_captions(data_cfg, tokenizer_cfg, image_size)`` reads the dataset (a Karpathy
split JSON, a CSV per split, or the procedural shapes set, generated here), trains a
SentencePiece model on the training captions and caches every image as pixels:

    <root>/<name>/generated/                 data=shapes: images/ and dataset.json
    <root>/<name>/spm/<key>/                 SentencePiece model of the training captions
    <root>/<name>/pixels/<size>/<key>.npy    uint8 (N, size, size, 3): to_pixels of each image
    <root>/<name>/features/<key>.npy         float16 (N, S, C): a frozen encoder's features

Every file is written under a temporary name and renamed when complete. Training
examples are (image, caption) pairs, one per caption; validation and test examples
are images, one each, scored against all of their captions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from nmt.core.errors import ConfigError, DataError
from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data.captions import KARPATHY_SPLITS, CaptionedImage, read_caption_csv, read_karpathy
from nmt.data.dataset import Batch
from nmt.data.images import normalize, read_pixels
from nmt.data.prepare import SPLITS, from_dict
from nmt.data.shapes import SHAPES_SPLITS, write_shapes
from nmt.data.tokenizer import Tokenizer, TokenizerConfig, VocabularyTooLarge, load_or_train

log = logging.getLogger(__name__)

FORMATS = ("karpathy", "csv", "shapes")


@dataclass(frozen=True)
class CaptionDataConfig:
    """Where the images and captions come from (see conf/data/shapes.yaml, flickr8k.yaml).

    ``format`` karpathy: ``karpathy_json`` and ``image_dir``, ``splits`` maps our splits
    to the JSON's; csv: ``csv`` maps our splits to files with ``image,caption`` columns,
    image names relative to ``image_dir``; shapes: generated from ``shapes`` (images per
    split) and ``seed``, at the model's image size.
    """

    name: str
    format: str = "karpathy"
    root: str = "data"
    karpathy_json: str | None = None
    image_dir: str | None = None
    splits: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in KARPATHY_SPLITS.items()})
    csv: dict[str, str | None] = field(default_factory=dict)
    shapes: dict[str, int] = field(default_factory=lambda: {
        "train": SHAPES_SPLITS["train"], "valid": SHAPES_SPLITS["val"],
        "test": SHAPES_SPLITS["test"]})
    seed: int = 1
    max_len: int = 50  # training captions longer than this (in pieces) are left out

    def check(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"data.format: unknown format {self.format!r}; valid choices: "
                              f"{', '.join(FORMATS)}")
        needed = {"karpathy": {"karpathy_json": self.karpathy_json, "image_dir": self.image_dir},
                  "csv": {"image_dir": self.image_dir, "csv.train": self.csv.get("train")},
                  }.get(self.format, {})
        for key, value in needed.items():
            if value in (None, "", "???"):
                raise ConfigError(f"data.{key} is not set (the dataset is local: give its "
                                  f"path, data.{key}=...)")
        splits = self.splits if self.format == "karpathy" else (
            self.csv if self.format == "csv" else {"train": 1, "valid": 1, "test": 1})
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ConfigError(f"data: unknown split(s) {sorted(unknown)}; valid splits: "
                              f"{', '.join(SPLITS)}")
        if self.max_len < 1:
            raise ConfigError(f"data.max_len must be >= 1, got {self.max_len}")

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.name


def read_records(cfg: CaptionDataConfig, image_size: int) -> dict[str, list[CaptionedImage]]:
    """The images and captions of every configured split (shapes: generated first)."""
    if cfg.format == "shapes":
        counts = {"train": cfg.shapes.get("train", 0), "val": cfg.shapes.get("valid", 0),
                  "test": cfg.shapes.get("test", 0)}
        json_path = write_shapes(cfg.directory / "generated", counts, cfg.seed, image_size)
        return _nonempty(read_karpathy(json_path, json_path.parent / "images"))
    if cfg.format == "karpathy":
        assert cfg.karpathy_json is not None and cfg.image_dir is not None  # check()
        return _nonempty(read_karpathy(cfg.karpathy_json, cfg.image_dir, cfg.splits))
    assert cfg.image_dir is not None
    return {split: read_caption_csv(path, cfg.image_dir)
            for split, path in cfg.csv.items() if path}


def _nonempty(records: dict[str, list[CaptionedImage]]) -> dict[str, list[CaptionedImage]]:
    return {split: images for split, images in records.items() if images}


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_npy(path: Path, shape: tuple[int, ...], dtype: Any,
                fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """``path`` memory-mapped; made by ``fill`` on a temporary file first if it is missing."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(array)
            array.flush()
            del array
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def cache_pixels(images: Sequence[CaptionedImage], cache_dir: Path, size: int) -> np.ndarray:
    """uint8 (N, size, size, 3) of the images, read once (an unreadable one: DataError)."""
    paths = [str(image.path) for image in images]
    path = cache_dir / "pixels" / str(size) / f"{_key(paths)}.npy"

    def fill(array: np.ndarray) -> None:
        log.info("reading %d images into %s", len(paths), path)
        for i, image_path in enumerate(paths):
            array[i] = read_pixels(image_path, size)

    return _atomic_npy(path, (len(paths), size, size, 3), np.uint8, fill)


@dataclass(frozen=True)
class ImageSettings:
    """The model's preprocessing (its record keeps them): data and inference use these."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def of(cls, model_config: Mapping[str, Any]) -> ImageSettings:
        return cls(int(model_config["image_size"]), tuple(model_config["image_mean"]),
                   tuple(model_config["image_std"]))


class FeatureEncoder(Protocol):
    """What caching features needs of a frozen image encoder (nmt.model's ImageEncoder
    fits): its weights, which key the cache, and ``features`` of normalised images."""

    training: bool

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def features(self, images: torch.Tensor) -> torch.Tensor: ...  # (B, S, C)

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def cache_features(pixels: np.ndarray, encoder: FeatureEncoder, settings: ImageSettings,
                   cache_dir: Path, batch_size: int = 64) -> np.ndarray:
    """float16 (N, S, C): a frozen encoder's features of every image, computed once.

    The key covers the pixels, the preprocessing and every weight of the encoder.
    """
    digest = hashlib.sha256(repr(settings).encode())
    digest.update(np.ascontiguousarray(pixels[: min(len(pixels), 16)]).tobytes())
    digest.update(str(pixels.shape).encode())
    for name, value in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir / "features" / f"{digest.hexdigest()[:16]}.npy"
    device = next(encoder.parameters()).device
    with torch.no_grad():
        sample = encoder.features(normalize(torch.from_numpy(np.array(pixels[:1])),
                                            settings.mean, settings.std).to(device))

    def fill(array: np.ndarray) -> None:
        log.info("computing the frozen encoder's features of %d images into %s",
                 len(pixels), path)
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            for start in range(0, len(pixels), batch_size):
                chunk = torch.from_numpy(np.array(pixels[start:start + batch_size]))
                images = normalize(chunk, settings.mean, settings.std).to(device)
                array[start:start + len(chunk)] = encoder.features(images).cpu().numpy()
        encoder.train(was_training)

    return _atomic_npy(path, (len(pixels), *sample.shape[1:]), np.float16, fill)


Example = tuple[int, np.ndarray, list[np.ndarray]]  # (index, image input, caption ids)


class CaptionDataset(Dataset):
    """Examples over one split's images: item i is (i, image input, its captions' ids).

    ``inputs`` holds one row per image: uint8 pixels (H, W, 3) or cached features
    (S, C); ``rows[i]`` is the image of example i and ``captions[i]`` the ids of its
    captions (no BOS/EOS): all of them in training, where the encoder then runs once for
    all captions of an image, the first one in evaluation (for the loss).
    """

    def __init__(self, inputs: np.ndarray, rows: np.ndarray,
                 captions: list[list[np.ndarray]]) -> None:
        self.inputs = inputs
        self.rows = rows
        self.captions = captions
        self.src_lengths = np.zeros(len(rows), dtype=np.int64)  # batches count caption tokens
        # An image's caption rows, padded to its longest, as the batch cost counts them.
        self.tgt_lengths = np.fromiter(
            (len(cs) * (max(map(len, cs)) + 1) - 1 for cs in captions), dtype=np.int64,
            count=len(captions))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        return i, np.asarray(self.inputs[self.rows[i]]), self.captions[i]

    def __getitems__(self, indices: list[int]) -> list[Example]:
        return [self[i] for i in indices]


@dataclass(frozen=True)
class CaptionCollate:
    """Examples -> Batch: images normalised here (features as they are), captions padded.

    ``src_lengths`` is the number of grid cells (``cells``), the same for every image.
    """

    settings: ImageSettings
    cells: int

    def __call__(self, examples: list[Example]) -> Batch:
        inputs = torch.from_numpy(np.stack([x for _, x, _ in examples]))
        src = (normalize(inputs, self.settings.mean, self.settings.std)
               if inputs.dtype == torch.uint8 else inputs.float())
        captions = [c for _, _, cs in examples for c in cs]
        counts = torch.tensor([len(cs) for _, _, cs in examples])
        tgt_in = torch.full((len(captions), max(map(len, captions)) + 1), PAD_ID,
                            dtype=torch.long)
        tgt_out = torch.full_like(tgt_in, PAD_ID)
        for row, caption in enumerate(captions):
            ids = torch.from_numpy(caption.astype(np.int64))
            tgt_in[row, 0] = BOS_ID
            tgt_in[row, 1:len(ids) + 1] = ids
            tgt_out[row, :len(ids)] = ids
            tgt_out[row, len(ids)] = EOS_ID
        n = len(examples)
        indices = torch.tensor([i for i, _, _ in examples], dtype=torch.long)
        src_index = (None if bool((counts == 1).all())
                     else torch.repeat_interleave(torch.arange(n), counts))
        return Batch(src, torch.full((n,), self.cells, dtype=torch.long), tgt_in, tgt_out,
                     indices, src_index)


@dataclass
class PreparedCaptions:
    """What ``prepare_captions`` produced; ``inputs`` per split are pixels until a frozen
    encoder's features replace them (``use_features``)."""

    tokenizer: Tokenizer
    records: dict[str, list[CaptionedImage]]
    inputs: dict[str, np.ndarray]
    encoded: dict[str, list[list[int]]]  # ids of every caption, per split, in image order
    max_len: int
    datasets: dict[str, CaptionDataset] = field(default_factory=dict)

    def build_datasets(self) -> None:
        for split, images in self.records.items():
            rows: list[int] = []
            captions: list[list[np.ndarray]] = []
            ids = iter(self.encoded[split])
            for row, image in enumerate(images):
                caption_ids = [next(ids) for _ in image.captions]
                if split == "train":  # every caption, the image encoded once for them all
                    kept = [c for c in caption_ids if 0 < len(c) <= self.max_len]
                else:  # one caption per image, for the loss: the outputs are scored
                    kept = caption_ids[:1]
                if kept:
                    rows.append(row)
                    captions.append([np.asarray(c, dtype=np.int32) for c in kept])
            if not rows:
                raise DataError(f"data: no {split} caption is at most {self.max_len} pieces "
                                "long (data.max_len)")
            self.datasets[split] = CaptionDataset(self.inputs[split], np.asarray(rows),
                                                  captions)

    def references(self, split: str) -> list[list[str]]:
        return [list(image.captions) for image in self.records[split]]


def caption_tokenizer(cache_dir: Path, captions: list[str], cfg: TokenizerConfig) -> Tokenizer:
    """SentencePiece model of the training captions; a vocab_size larger than the captions
    allow (a small or generated dataset) is lowered to what they allow."""
    try:
        return load_or_train(cache_dir / cfg.key(_key(captions)), "captions", captions, cfg)
    except VocabularyTooLarge as e:
        if e.limit is None or e.limit >= cfg.vocab_size:
            raise
        log.info("tokenizer.vocab_size lowered from %d to %d: the captions allow no more",
                 cfg.vocab_size, e.limit)
        return caption_tokenizer(cache_dir, captions, dataclasses.replace(cfg,
                                                                          vocab_size=e.limit))


def prepare_captions(cfg: CaptionDataConfig | Mapping[str, Any],
                     tokenizer_cfg: TokenizerConfig | Mapping[str, Any],
                     image_size: int, tokenizer: Tokenizer | None = None) -> PreparedCaptions:
    """Read, tokenise (with ``tokenizer`` if given: a checkpoint's) and cache every split."""
    if not isinstance(cfg, CaptionDataConfig):
        cfg = from_dict(CaptionDataConfig, cfg, "data")
    cfg.check()
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = from_dict(TokenizerConfig, tokenizer_cfg, "tokenizer")
    records = read_records(cfg, image_size)
    if "train" not in records:
        raise DataError(f"data: the dataset {cfg.name!r} has no training images")
    train_captions = [c for image in records["train"] for c in image.captions]
    tokenizer = tokenizer or caption_tokenizer(cfg.directory / "spm", train_captions, tokenizer_cfg)
    inputs = {split: cache_pixels(images, cfg.directory, image_size)
              for split, images in records.items()}
    encoded = {split: tokenizer.encode([c for image in images for c in image.captions])
               for split, images in records.items()}
    prepared = PreparedCaptions(tokenizer, records, inputs, encoded, cfg.max_len)
    prepared.build_datasets()
    return prepared

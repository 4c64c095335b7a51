"""Decoding as a library: the options (``Decoding``, validated here once), ``decode`` for one
batch, and checkpoint loading. Training validation, the translator and every tool use these.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import pickle
import typing
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch

from nmt.beam import beam_search
from nmt.errors import CheckpointError, ConfigError
from nmt.search import Hypothesis, SearchModel, greedy_search, sample


@dataclass(frozen=True)
class Decoding:
    """How to decode; the one place these options are checked (search trusts them).

    ``beam_size`` 1 with ``n_best`` 1 is greedy search; ``sampling`` draws one output per
    sentence instead of searching (``beam_size``, ``alpha``, ``n_best`` are then unused).
    Output lengths count the EOS: at most ``int(max_len_a * source_length + max_len_b)``
    tokens, and at most ``max_len`` when it is set (None: no cap). ``max_len`` is for a
    source whose length says nothing about the output's, such as an image encoder's
    feature grid: the cap holds whatever the source length is. ``min_len`` forbids EOS
    before that many tokens; the length limit wins over it. ``shortlist`` scores only the
    target pieces that the checkpoint's lexical shortlist table allows for the batch's
    source pieces (nmt/shortlist.py; scores are then normalised over those pieces).
    """

    beam_size: int = 5
    alpha: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10
    max_len: int | None = None
    min_len: int = 0
    n_best: int = 1
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 1
    shortlist: bool = False

    def __post_init__(self) -> None:
        problems = _type_problems(self) or _value_problems(self)
        if problems:
            raise ConfigError("decoding: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, where: str = "decoding",
                  **defaults: Any) -> Decoding:
        """Settings from a config mapping; unknown keys are refused with the valid ones."""
        values = {**defaults, **(values or {})}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(names)}")
        return cls(**values)


def _type_problems(d: Decoding) -> list[str]:
    """Values of the wrong kind (a string from a config, a float count), before comparing."""
    problems = []
    for name, kind in typing.get_type_hints(Decoding).items():
        value = getattr(d, name)
        if value is None and kind == int | None:
            continue
        if kind is bool:
            if not isinstance(value, bool):
                problems.append(f"{name} must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            problems.append(f"{name} must be a number, got {value!r}")
        elif kind is not float and not isinstance(value, numbers.Integral):
            problems.append(f"{name} must be an integer, got {value!r}")
        elif not math.isfinite(value):
            problems.append(f"{name} must be finite, got {value!r}")
    return problems


def _value_problems(d: Decoding) -> list[str]:
    problems = []
    if d.beam_size < 1:
        problems.append(f"beam_size must be >= 1, got {d.beam_size}")
    elif not 1 <= d.n_best <= d.beam_size and not d.sampling:
        problems.append(f"n_best must be between 1 and beam_size ({d.beam_size}), "
                        f"got {d.n_best}")
    if d.min_len < 0:
        problems.append(f"min_len must be >= 0, got {d.min_len}")
    if d.max_len_a < 0 or d.max_len_b < 0 or d.max_len_a == d.max_len_b == 0:
        problems.append("max_len_a and max_len_b must be >= 0 and not both 0 (the limit counts "
                        f"the EOS), got {d.max_len_a} and {d.max_len_b}")
    if d.max_len is not None and d.max_len < 1:
        problems.append("max_len must be >= 1 (it counts the EOS) or None (no cap), "
                        f"got {d.max_len}")
    if d.temperature <= 0:
        problems.append(f"temperature must be > 0, got {d.temperature}")
    if d.top_k < 0:
        problems.append(f"top_k must be >= 0 (0: the full distribution), got {d.top_k}")
    return problems


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> dict[str, Any]:
    """torch.load with weights_only=True, and a clear error for every way it can fail."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError,
            ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "hyper_parameters"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint of this toolkit "
                              "(no state_dict and hyper_parameters)")
    tokenizers = ckpt.get("tokenizers") or {}
    if not tokenizers.get("tgt"):  # a captioning model has no source tokenizer
        raise CheckpointError(f"{path}: the checkpoint carries no SentencePiece models")
    return ckpt


class HasSource(Protocol):
    """What ``decode`` reads from a batch: nmt.data.dataset.Batch and ``SourceBatch`` fit."""

    @property
    def src(self) -> torch.Tensor: ...  # (B, S) ids ending in EOS, right-padded

    @property
    def src_lengths(self) -> torch.Tensor: ...  # (B,) EOS included


class SourceBatch(NamedTuple):
    """Sources alone, for inference callers that have no targets."""

    src: torch.Tensor  # (B, S) ids ending in EOS, right-padded
    src_lengths: torch.Tensor  # (B,) EOS included


def decode(model: SearchModel, batch: HasSource, decoding: Decoding,
           return_attention: bool = False, generator: torch.Generator | None = None
           ) -> list[list[Hypothesis]]:
    """Run the search ``decoding`` asks for on one batch: translation and validation share
    this. ``generator`` (on the model's device) only serves sampling."""
    src, src_lengths = batch.src, batch.src_lengths
    if decoding.sampling:
        return sample(model, src, src_lengths, decoding, generator=generator,
                      return_attention=return_attention)
    if decoding.beam_size == 1 and decoding.n_best == 1:
        return greedy_search(model, src, src_lengths, decoding,
                             return_attention=return_attention)
    return beam_search(model, src, src_lengths, decoding, return_attention=return_attention)

"""Decoding as a library: the options (``Decoding``, validated here once), ``decode`` for one
batch, and checkpoint loading. Training validation, the translator and every tool use these.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nmt.errors import CheckpointError, ConfigError
from nmt.model import Seq2Seq
from nmt.search import Hypothesis, beam_search, greedy_search, sample


@dataclass(frozen=True)
class Decoding:
    """How to decode: beam_size 1 is greedy; ``sampling`` draws instead of searching."""

    beam_size: int = 5
    alpha: float = 0.6
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 0
    n_best: int = 1
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.beam_size < 1:
            problems.append(f"beam_size must be >= 1, got {self.beam_size}")
        if not 1 <= self.n_best <= self.beam_size and not self.sampling:
            problems.append(f"n_best must be between 1 and beam_size ({self.beam_size}), "
                            f"got {self.n_best}")
        if self.min_len < 0:
            problems.append(f"min_len must be >= 0, got {self.min_len}")
        if self.max_len_a < 0 or self.max_len_b < 0 or self.max_len_a == self.max_len_b == 0:
            problems.append("max_len_a and max_len_b must be >= 0 and not both 0")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
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
    if not tokenizers.get("src") or not tokenizers.get("tgt"):
        raise CheckpointError(f"{path}: the checkpoint carries no SentencePiece models")
    return ckpt



def decode(model: Seq2Seq, src: torch.Tensor, src_lengths: torch.Tensor, d: Decoding,
           return_attention: bool = False, generator: torch.Generator | None = None
           ) -> list[list[Hypothesis]]:
    """Run the search ``d`` asks for on one batch: translation and validation share this."""
    lengths = {"max_len_a": d.max_len_a, "max_len_b": d.max_len_b, "min_len": d.min_len}
    if d.sampling:
        return sample(model, src, src_lengths, temperature=d.temperature, top_k=d.top_k,
                      generator=generator, return_attention=return_attention, **lengths)
    if d.beam_size == 1 and d.n_best == 1:
        return greedy_search(model, src, src_lengths, return_attention=return_attention,
                             **lengths)
    return beam_search(model, src, src_lengths, beam_size=d.beam_size, alpha=d.alpha,
                       n_best=d.n_best, return_attention=return_attention, **lengths)

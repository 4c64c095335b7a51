"""``decode``: one batch through the search its options ask for (greedy, beam or
sampling). Training validation, the translator and the captioner share it."""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

from nmt.decoding.beam import beam_search
from nmt.decoding.options import Decoding
from nmt.decoding.search import Hypothesis, SearchModel, greedy_search, sample


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

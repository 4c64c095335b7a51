"""Ensembles: several trained models searched as one.

    ensemble = Ensemble([model_a, model_b, model_c])
    hyps = decode(ensemble, batch, Decoding(beam_size=5))   # any search of nmt/decoding/search.py

An ``Ensemble`` has the step interface of nmt.decoding.search.SearchModel: it encodes the
source once per member, steps every member, and gives search the mean of the members'
log-probabilities, which search normalises (log_softmax) as it does any model's
logits: the ensemble's distribution is the normalised geometric mean of the members'.
Greedy, beam, n-best and sampling then work unchanged. Encoder outputs and decoder
states are tuples, one entry per member, reordered member by member.

The members must share the target vocabulary (their outputs are averaged id by id) and
read the same source ids; ``check_compatible`` says which checkpoints do not.

An ensemble of one returns its member's own logits: its output is the single model's,
byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nmt.core.errors import CheckpointError


class Ensemble(nn.Module):
    """Members (nn.Modules with the step interface) searched as one model."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def models(self) -> list[Any]:
        """The members, as the step interface sees them."""
        return list(self.members)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> tuple[Any, ...]:
        return tuple(m.encode(src, src_lengths) for m in self.models)

    def init_state(self, enc: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(m.init_state(e) for m, e in zip(self.models, enc, strict=True))

    def step(self, prev_tokens: torch.Tensor, state: tuple[Any, ...], enc: tuple[Any, ...]
             ) -> tuple[torch.Tensor, tuple[Any, ...], torch.Tensor | None]:
        """(B,) -> mean log-probs (B, V) (a lone member: its logits), states, mean attention."""
        return self.combine([m.step(prev_tokens, s, e)
                             for m, s, e in zip(self.models, state, enc, strict=True)])

    @staticmethod
    def combine(outs: list[tuple[torch.Tensor, Any, torch.Tensor | None]]
                ) -> tuple[torch.Tensor, tuple[Any, ...], torch.Tensor | None]:
        """The members' steps as one: mean log-probs (a lone member: its logits), their
        states, mean attention."""
        states = tuple(new_state for _, new_state, _ in outs)
        if len(outs) == 1:
            logits, _, attn = outs[0]
            return logits, states, attn
        lprobs = torch.stack([F.log_softmax(logits.float(), dim=-1)
                              for logits, _, _ in outs]).mean(0)  # (B, V)
        attns = [a.float() for _, _, a in outs if a is not None]  # each (B, S)
        attn = torch.stack(attns).mean(0) if attns else None
        return lprobs, states, attn

    def reorder_encoder(self, enc: tuple[Any, ...], index: torch.Tensor) -> tuple[Any, ...]:
        return tuple(m.reorder_encoder(e, index) for m, e in zip(self.models, enc, strict=True))

    def reorder_state(self, state: tuple[Any, ...], index: torch.Tensor) -> tuple[Any, ...]:
        return tuple(m.reorder_state(s, index)
                     for m, s in zip(self.models, state, strict=True))


def check_compatible(checkpoints: Sequence[dict[str, Any]], paths: Sequence[str]) -> None:
    """CheckpointError unless every checkpoint has the first one's tokenizers: members
    average their target distributions id by id, and read the same source ids."""
    first = checkpoints[0]["tokenizers"]
    for ckpt, path in zip(checkpoints[1:], paths[1:], strict=True):
        for side, name in (("tgt", "target"), ("src", "source")):
            if (ckpt["tokenizers"].get(side) or b"") != (first.get(side) or b""):
                raise CheckpointError(
                    f"{path} and {paths[0]} have different {name} vocabularies (SentencePiece "
                    "models); ensemble members must share them (models trained on the same "
                    "data and tokenizer settings do)")

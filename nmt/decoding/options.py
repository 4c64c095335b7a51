"""The decoding options: ``Decoding``, validated here once, so that every search, tool and
request reads options that are already known to be sound."""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any

from nmt.core.errors import ConfigError

# The largest size of a number option: a length, count or factor beyond it means nothing
# and overflows the integers of the search; a seed may use torch's 64 bits.
LIMIT = 2**31 - 1
SEED_LIMIT = 2**63 - 1


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
    source pieces (nmt/decoding/shortlist.py; scores are then normalised over those pieces).
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
        elif abs(typing.cast(float, value)) > (limit := SEED_LIMIT if name == "seed" else LIMIT):
            problems.append(f"{name} is out of range (at most {limit} in size), got {value!r}")
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

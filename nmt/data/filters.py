"""Which training pairs to keep: the filters of ``data.clean`` and their counts.

A training pair is dropped for the first of these reasons that holds (dev and test
splits are never filtered):

    empty       a side is empty                        drop_empty (on)
    same        the source text equals the target's    drop_same (on)
    too_long    a side has more than max_len pieces    max_len (100)
    bad_ratio   one side over max_ratio x the other    max_ratio (3.0)
    language    a side is not in data.src_lang /       langid (off; py3langid, whose
                tgt_lang by language identification    model ships with it)
    duplicate   the pair repeats an earlier kept one   dedup (on)

Duplicates are found by a 64-bit hash of the pair's text (BLAKE2b), kept sorted in
one array: 8 bytes per kept pair, never the text. Two different pairs share a hash
with probability about n^2 / 2^65 (10 M pairs: 3 in a million).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from nmt.core.errors import ConfigError, DataError
from nmt.core.languages import primary

REASONS = ("empty", "same", "too_long", "bad_ratio", "language", "duplicate")
KEEP = 0  # the reason code of a kept pair; reason k of REASONS is code k + 1


@dataclass
class CleanReport:
    """How many training pairs cleaning kept and why it dropped the others."""

    total: int = 0
    kept: int = 0
    empty: int = 0
    same: int = 0
    too_long: int = 0
    bad_ratio: int = 0
    language: int = 0
    duplicate: int = 0

    @property
    def dropped(self) -> int:
        return sum(getattr(self, reason) for reason in REASONS)

    def count(self, codes: np.ndarray) -> None:
        """Add a chunk's pairs, given each one's reason code (KEEP or a REASONS index + 1)."""
        per_code = np.bincount(codes, minlength=len(REASONS) + 1)
        self.total += len(codes)
        for k, reason in enumerate(REASONS, start=1):
            setattr(self, reason, getattr(self, reason) + int(per_code[k]))
        self.kept = self.total - self.dropped

    def __str__(self) -> str:
        parts = [f"{self.empty} with an empty side", f"{self.same} identical on both sides",
                 f"{self.too_long} longer than max_len",
                 f"{self.bad_ratio} with a length ratio above max_ratio",
                 f"{self.language} not in the expected languages",
                 f"{self.duplicate} repeating an earlier pair"]
        return (f"kept {self.kept} of {self.total} pairs; dropped {self.dropped} "
                f"({', '.join(parts)})")

    def to_dict(self) -> dict[str, int]:
        return {"total": self.total, "kept": self.kept, "dropped": self.dropped,
                **{reason: getattr(self, reason) for reason in REASONS}}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CleanReport:
        """A stored report (``to_dict``); keys of older caches missing count 0."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in values.items() if k in names})


@dataclass(frozen=True)
class CleanConfig:
    """Filters for training pairs (see the module docstring); lengths are counted in
    subword tokens. ``max_len`` or ``max_ratio`` set to None disables that filter."""

    drop_empty: bool = True
    drop_same: bool = True
    max_len: int | None = 100
    max_ratio: float | None = 3.0
    langid: bool = False
    dedup: bool = True

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 1:
            raise DataError(f"clean.max_len must be a positive token count, got {self.max_len}")
        if self.max_ratio is not None and self.max_ratio < 1:
            raise DataError(f"clean.max_ratio must be >= 1, got {self.max_ratio}")

    def reason(self, src_len: int, tgt_len: int) -> str | None:
        """Why a pair with these token lengths is dropped, or None to keep it."""
        if src_len == 0 or tgt_len == 0:
            return "empty" if self.drop_empty else None
        if self.max_len is not None and max(src_len, tgt_len) > self.max_len:
            return "too_long"
        if self.max_ratio is not None and max(src_len, tgt_len) > self.max_ratio * min(
            src_len, tgt_len
        ):
            return "bad_ratio"
        return None

    def codes(self, src: list[str], tgt: list[str], src_lengths: np.ndarray,
              tgt_lengths: np.ndarray, languages: tuple[str, str] | None) -> np.ndarray:
        """Each pair's reason code (KEEP to keep it), all but ``duplicate``; ``languages``
        (src, tgt) is given when ``langid`` is on."""
        codes = np.zeros(len(src), dtype=np.int8)
        for k, (s, t) in enumerate(zip(src_lengths.tolist(), tgt_lengths.tolist(),
                                       strict=True)):
            why = self.reason(s, t)
            if why != "empty" and s and t and self.drop_same and src[k] == tgt[k]:
                why = "same"
            if why is not None:
                codes[k] = REASONS.index(why) + 1
        if self.langid and languages is not None:
            kept = np.flatnonzero(codes == KEEP)
            wrong = (off_language([src[i] for i in kept], languages[0])
                     | off_language([tgt[i] for i in kept], languages[1]))
            codes[kept[wrong]] = REASONS.index("language") + 1
        return codes


def pair_hashes(src: list[str], tgt: list[str]) -> np.ndarray:
    """A 64-bit hash of each pair's text (uint64), the same in every process."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{s}\0{t}".encode(), digest_size=8).digest(),
                        "little") for s, t in zip(src, tgt, strict=True)),
        dtype=np.uint64, count=len(src))


class Deduplicator:
    """Remembers the hashes of the pairs kept so far (sorted, 8 bytes each)."""

    def __init__(self) -> None:
        self.seen = np.empty(0, dtype=np.uint64)

    def first(self, hashes: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Which of ``candidates`` (bool, per hash) are the first of their hash, in this
        chunk and all before it; those are remembered."""
        positions = np.flatnonzero(candidates)
        distinct, first = np.unique(hashes[positions], return_index=True)
        at = np.searchsorted(self.seen, distinct)
        known = np.zeros(len(distinct), dtype=bool)
        inside = at < len(self.seen)
        known[inside] = self.seen[at[inside]] == distinct[inside]
        keep = np.zeros(len(hashes), dtype=bool)
        keep[positions[first[~known]]] = True
        self.seen = np.insert(self.seen, at[~known], distinct[~known])
        return keep


# --- language identification ---------------------------------------------------------------

_IDENTIFIERS: dict[str, Any] = {}


def _identifier() -> Any:
    if "langid" not in _IDENTIFIERS:
        try:
            import py3langid.langid as langid
        except ImportError:
            raise ConfigError('data.clean.langid=true needs py3langid: pip install -e ".[langid]"'
                              ) from None
        _IDENTIFIERS["langid"] = langid.LanguageIdentifier.from_model_file(langid.MODEL_FILE)
    return _IDENTIFIERS["langid"]


def check_languages(src_lang: str, tgt_lang: str) -> None:
    """Fail at start when language identification cannot tell these languages."""
    known = set(_identifier().nb_classes)
    for key, tag in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if primary(tag) not in known:
            raise ConfigError(f"data.clean.langid: py3langid does not know data.{key}={tag}; "
                              f"it knows {', '.join(sorted(known))}")


def off_language(texts: list[str], tag: str) -> np.ndarray:
    """Which texts py3langid assigns another language than ``tag`` (bool)."""
    identifier, code = _identifier(), primary(tag)
    return np.fromiter((identifier.classify(t)[0] != code for t in texts), dtype=bool,
                       count=len(texts))

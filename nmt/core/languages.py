"""Language tags as data.src_lang / data.tgt_lang take them: BCP-47 (en, de, zh-Hans,
pt-BR, sr-Latn-RS, ...; a POSIX locale's underscore, zh_CN, is read as a hyphen).

What a tag decides elsewhere: sacreBLEU's tokenizer for a target language
(nmt/core/metrics.py) and the language-identification filter (nmt/data/filters.py),
both by the primary subtag.
"""

from __future__ import annotations

import re

from nmt.core.errors import ConfigError

# language (2-3 letters: what is in use; catches "german"), then script, region, variants,
# extensions, private use: the shape of RFC 5646, case-insensitive.
_TAG = re.compile(
    r"[a-z]{2,3}(-[a-z]{3}){0,3}"  # language (ISO 639), extended language subtags
    r"(-[a-z]{4})?"  # script (Hans, Latn)
    r"(-([a-z]{2}|[0-9]{3}))?"  # region (CN, 419)
    r"(-([a-z0-9]{5,8}|[0-9][a-z0-9]{3}))*"  # variants
    r"(-[0-9a-wyz](-[a-z0-9]{2,8})+)*"  # extensions
    r"(-x(-[a-z0-9]{1,8})+)?",  # private use
    re.IGNORECASE)
# Scripts written without spaces between words, or with large alphabets: by primary subtag.
CJK = frozenset({"zh", "ja", "ko", "yue", "wuu", "cmn"})


def normalize(tag: str) -> str:
    return tag.strip().replace("_", "-")


def check_tag(tag: object, key: str) -> str:
    """``tag`` if it is a BCP-47 language tag, else a ConfigError naming ``key``."""
    if not isinstance(tag, str) or not _TAG.fullmatch(normalize(tag)):
        raise ConfigError(f"{key} must be a BCP-47 language tag (en, de, zh-Hans, pt-BR, ...), "
                          f"got {tag!r}")
    return tag


def primary(tag: str) -> str:
    """The primary language subtag, lowercased: zh-Hans -> zh, pt_BR -> pt."""
    return normalize(tag).split("-")[0].lower()

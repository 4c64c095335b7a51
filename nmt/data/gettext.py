"""The gettext corpora: English software messages and their human translations, built from
the compiled gettext catalogs (``.mo``) that Debian/Ubuntu packages install under
``/usr/share/locale/<locale>/LC_MESSAGES/<package>.mo`` (``python -m nmt.cli gettext``).

A catalog's entries become sentence pairs (msgid, msgstr): the header (empty msgid) is
dropped, a context (``msgctxt\\x04msgid``) is stripped, a plural entry keeps its singular
(the msgid and the first msgstr form), whitespace is collapsed to single spaces, and an
entry is dropped when a side is empty, when it is untranslated (msgstr == msgid) or when a
side has several lines. A catalog in another charset than UTF-8 is decoded by the charset
its header names; one that cannot be read or decoded is skipped and counted.

Each package goes to one split, train, dev or test, chosen by a hash of its name (the same
on every machine and for every language), or by the lists ``dev_packages`` and
``test_packages``; packages are read in the order train, dev, test and a pair seen before
is dropped, so dev and test hold neither packages nor pairs of train. The files,
``<output>/gettext/en-XX/{train,dev,test}.{en,XX}.gz``, are what the catalog corpus
``gettext`` reads (nmt/data/catalog.py); XX is the locale's language subtag (zh_CN: zh).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import logging
import os
import re
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nmt.core.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MO_MAGIC = 0x950412DE
DEFAULT_LOCALE_DIR = "/usr/share/locale"
DEFAULT_LANGUAGES = ("zh_CN", "ja", "ko", "de")
SPLITS = ("train", "dev", "test")  # the order packages are read in: a repeat of train is gone
BUCKETS = 100  # a package's bucket: its name's hash modulo this
DEV_BUCKETS = range(0, 5)  # about 5% of the packages
TEST_BUCKETS = range(5, 10)
DROP_REASONS = ("header", "multi_line", "empty", "untranslated", "duplicate")


def language_code(locale: str) -> str:
    """A locale directory's language subtag, the corpus' language: zh_CN -> zh, de -> de,
    sr@latin -> sr."""
    return re.split(r"[_.@]", locale, maxsplit=1)[0]


def read_mo(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The (msgid, msgstr) entries of a compiled catalog in file order, decoded by the
    charset of its header (UTF-8 without one). DataError for a file that is not a
    catalog, is truncated, or cannot be decoded."""
    data = Path(path).read_bytes()
    order = next((o for o in "<>" if data[:4] == struct.pack(o + "I", MO_MAGIC)), None)
    if order is None or len(data) < 20:
        raise DataError(f"{path}: not a gettext catalog (.mo)")
    revision, n, originals, translations = struct.unpack(order + "4I", data[4:20])
    if revision >> 16 > 1:
        raise DataError(f"{path}: catalog format revision {revision >> 16}, we read 0 and 1")
    raw = [(_string(data, originals + 8 * i, order, path),
            _string(data, translations + 8 * i, order, path)) for i in range(n)]
    header = next((msgstr for msgid, msgstr in raw if msgid == b""), b"")
    found = re.search(rb"charset=\s*([-\w.:]+)", header)
    charset = found.group(1).decode("ascii") if found else "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        raise DataError(f"{path}: unknown charset {charset!r}") from None
    try:
        return [(msgid.decode(charset), msgstr.decode(charset)) for msgid, msgstr in raw]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid {charset} ({e.reason})") from None


def _string(data: bytes, at: int, order: str, path: str | os.PathLike) -> bytes:
    """The string whose (length, offset) descriptor is at byte ``at``."""
    if at + 8 > len(data):
        raise DataError(f"{path}: truncated catalog")
    length, offset = struct.unpack_from(order + "2I", data, at)
    if offset + length > len(data):
        raise DataError(f"{path}: truncated catalog")
    return data[offset:offset + length]


def collapse(text: str) -> str:
    """Runs of whitespace (line breaks included) as one space, none at either end."""
    return " ".join(text.split())


def entry_pairs(entries: Iterable[tuple[str, str]], dropped: Counter[str]
                ) -> Iterator[tuple[str, str]]:
    """The sentence pairs of a catalog's entries; counts what is dropped in ``dropped``."""
    for msgid, msgstr in entries:
        if msgid == "":
            dropped["header"] += 1
            continue
        msgid = msgid.rpartition("\x04")[2]  # msgctxt\x04msgid: the context is not text
        # A plural entry (msgid\0msgid_plural, one msgstr form per plural rule): its
        # singular, the form a reader sees for one item.
        src, tgt = msgid.partition("\x00")[0].strip(), msgstr.partition("\x00")[0].strip()
        if len(src.splitlines()) > 1 or len(tgt.splitlines()) > 1:
            dropped["multi_line"] += 1
            continue
        src, tgt = collapse(src), collapse(tgt)
        if not src or not tgt:
            dropped["empty"] += 1
        elif src == tgt:
            dropped["untranslated"] += 1
        else:
            yield src, tgt


def split_of(package: str, dev_packages: Sequence[str] | None = None,
             test_packages: Sequence[str] | None = None) -> str:
    """The split of a package: a listed one goes where its list says; otherwise (when the
    list of that split is not given) by the BLAKE2b hash of its name, stable everywhere.
    Names that differ only by - and _ hash alike: iso-codes installs each catalog under
    both (iso_639-3.mo, iso_639_3.mo)."""
    if test_packages is not None and package in test_packages:
        return "test"
    if dev_packages is not None and package in dev_packages:
        return "dev"
    digest = hashlib.blake2b(package.replace("_", "-").encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % BUCKETS
    if dev_packages is None and bucket in DEV_BUCKETS:
        return "dev"
    if test_packages is None and bucket in TEST_BUCKETS:
        return "test"
    return "train"


def build_language(locale_dir: Path, locale: str, dev_packages: Sequence[str] | None,
                   test_packages: Sequence[str] | None) -> dict[str, Any]:
    """The pairs of every split of one locale, with what was dropped and skipped."""
    catalogs = sorted((locale_dir / locale / "LC_MESSAGES").glob("*.mo"))
    order = {split: i for i, split in enumerate(SPLITS)}
    splits = {path.stem: split_of(path.stem, dev_packages, test_packages) for path in catalogs}
    pairs: dict[str, list[tuple[str, str]]] = {split: [] for split in SPLITS}
    packages: dict[str, list[str]] = {split: [] for split in SPLITS}
    dropped: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    skipped: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    for path in sorted(catalogs, key=lambda p: (order[splits[p.stem]], p.stem)):
        try:
            entries = read_mo(path)
        except (DataError, OSError) as e:
            skipped[str(path.relative_to(locale_dir))] = str(e).removeprefix(f"{path}: ")
            continue
        split = splits[path.stem]
        packages[split].append(path.stem)
        for pair in entry_pairs(entries, dropped):
            if pair in seen:
                dropped["duplicate"] += 1
            else:
                seen.add(pair)
                pairs[split].append(pair)
    return {"pairs": pairs, "packages": packages, "dropped": dict(dropped),
            "skipped": skipped}


def write_pair(root: Path, code: str, pairs: dict[str, list[tuple[str, str]]]) -> Path:
    """Write ``root/en-<code>/{split}.{en,<code>}.gz`` into a temporary directory renamed
    when complete (an older copy is replaced whole). The files are reproducible: gzip
    without a name or time."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"en-{code}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".en-{code}.", suffix=".part"))
    try:
        for split, split_pairs in pairs.items():
            for side, lang in enumerate(("en", code)):
                with open(tmp / f"{split}.{lang}.gz", "wb") as raw, gzip.GzipFile(
                        filename="", mode="wb", fileobj=raw, mtime=0) as f:
                    f.writelines((pair[side] + "\n").encode("utf-8") for pair in split_pairs)
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".en-{code}.", suffix=".old"))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _checked_languages(locale_dir: Path, languages: Sequence[str]) -> dict[str, str]:
    """language code -> locale, after the checks a user can act on."""
    if not locale_dir.is_dir():
        raise DataError(f"{locale_dir}: no such directory (locale_dir: where the gettext "
                        "catalogs are, <locale_dir>/<locale>/LC_MESSAGES/*.mo)")
    codes: dict[str, str] = {}
    for locale in languages:
        code = language_code(str(locale))
        if code == "en":
            raise ConfigError(f"languages: {locale} is English, the source side of every "
                              "pair; give the target locales, e.g. [zh_CN,ja,ko,de]")
        if code in codes:
            raise ConfigError(f"languages: {codes[code]} and {locale} are both {code!r} (the "
                              "corpus' language is the locale's first subtag); give one")
        codes[code] = str(locale)
    if not codes:
        raise ConfigError("languages: give at least one locale, e.g. [zh_CN,ja,ko,de]")
    absent = [loc for loc in codes.values()
              if not list((locale_dir / loc / "LC_MESSAGES").glob("*.mo"))]
    if absent:
        present = sorted({p.parent.parent.name for p in locale_dir.glob("*/LC_MESSAGES/*.mo")})
        shown = ", ".join(present[:20]) + (f", ... ({len(present)} in all)"
                                           if len(present) > 20 else "")
        raise DataError(f"{locale_dir}: no catalogs for {', '.join(absent)}; locales with "
                        f"catalogs: {shown or 'none'}")
    return codes


def build(output: str | os.PathLike, locale_dir: str | os.PathLike = DEFAULT_LOCALE_DIR,
          languages: Sequence[str] = DEFAULT_LANGUAGES,
          dev_packages: Sequence[str] | None = None,
          test_packages: Sequence[str] | None = None) -> dict[str, Any]:
    """Build ``output/gettext/en-XX/`` for every locale of ``languages`` from the catalogs
    under ``locale_dir``; return a summary (pairs per split, packages, dropped entries and
    skipped catalogs per pair)."""
    both = set(dev_packages or ()) & set(test_packages or ())
    if both:
        raise ConfigError(f"dev_packages and test_packages both list {', '.join(sorted(both))}")
    locale_dir = Path(locale_dir)
    codes = _checked_languages(locale_dir, languages)
    root = Path(output) / "gettext"
    summary: dict[str, Any] = {"output": str(root), "locale_dir": str(locale_dir),
                               "pairs": {}, "packages": {}, "dropped": {}, "skipped": {}}
    for code, locale in codes.items():
        built = build_language(locale_dir, locale, dev_packages, test_packages)
        pair = f"en-{code}"
        path = write_pair(root, code, built["pairs"])
        counts = {split: len(p) for split, p in built["pairs"].items()}
        log.info("%s (%s): %s in %s", pair, locale, counts, path)
        for split, n in counts.items():
            if n == 0:
                log.warning("%s: the %s split is empty (no package of it has a catalog "
                            "in %s)", pair, split, locale)
        packages = built["packages"]
        summary["pairs"][pair] = counts
        summary["packages"][pair] = {"train": len(packages["train"]),
                                     "dev": packages["dev"], "test": packages["test"]}
        summary["dropped"][pair] = built["dropped"]
        summary["skipped"][pair] = built["skipped"]
    summary["skipped_catalogs"] = sum(len(s) for s in summary["skipped"].values())
    return summary

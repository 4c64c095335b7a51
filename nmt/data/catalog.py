"""The catalog of known corpora: where their files live online, how each file is verified,
and fetching a split (cache, offline copy, or download)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nmt.core.errors import DataError
from nmt.data.corpus import DATA_DIR_ENV, GZIP_MAGIC, ParallelFiles, read_lines

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CatalogCorpus:
    """A public corpus: where its files live online and how each one is verified.

    A file with a pinned sha256 must match it. A file without one (we could not
    download it when the catalog was written) must be gzip, UTF-8 and have its
    split's published line count (``lines``); its sha256 is then recorded beside
    the cache and checked on every later use (trust on first use).

    A corpus with no ``url`` has no published version: users build their own copy
    (``build`` says how), whose content differs from machine to machine, so a file
    is only checked to be gzip (UTF-8 and line alignment are checked when it is read);
    its sha256 still keys the caches, so a rebuilt copy is prepared anew.
    """

    name: str
    url: str | None  # template with {file}; None: no download, a copy built locally
    languages: tuple[str, ...]
    splits: tuple[str, ...]
    sha256: dict[str, str] = field(default_factory=dict)
    pattern: str = "{split}.{lang}.gz"
    split_languages: dict[str, tuple[str, ...]] = field(default_factory=dict)  # default: all
    lines: dict[str, int] = field(default_factory=dict)  # split -> lines, files with no sha256
    test_splits: tuple[str, ...] = ()  # what evaluate.py split=all_tests means
    # Files kept per language pair ({pair} in ``pattern``, e.g. "en-zh"): the pairs there are.
    pairs: tuple[str, ...] = ()
    build: str = ""  # a corpus with no url: the command that builds a copy

    def languages_of(self, split: str) -> tuple[str, ...]:
        return self.split_languages.get(split, self.languages)

    def filename(self, split: str, lang: str, other: str | None = None) -> str:
        """The file of ``lang`` in ``split``. A corpus kept per language pair needs
        ``other``, the pair's other language; without it only the names are checked
        (and the pair is ``*`` in the name)."""
        if split not in self.splits:
            raise DataError(f"corpus {self.name!r} has no split {split!r}; "
                            f"valid splits: {', '.join(self.splits)}")
        if lang not in self.languages:
            raise DataError(
                f"corpus {self.name!r} has no language {lang!r}; "
                f"valid languages: {', '.join(self.languages)}"
            )
        if lang not in self.languages_of(split):
            raise DataError(
                f"corpus {self.name!r}: split {split!r} has no language {lang!r}; "
                f"its languages: {', '.join(self.languages_of(split))}"
            )
        return self.pattern.format(split=split, lang=lang, pair=self.pair(lang, other))

    def pair(self, lang: str, other: str | None) -> str:
        """The directory of the pair ``lang``-``other`` (either order) in a corpus kept per
        pair; ``*`` without ``other``, "" for a corpus that is not."""
        if not self.pairs or other is None:
            return "*" if self.pairs else ""
        for pair in (f"{lang}-{other}", f"{other}-{lang}"):
            if pair in self.pairs:
                return pair
        raise DataError(f"corpus {self.name!r} has no language pair {lang}-{other}; "
                        f"its pairs: {', '.join(self.pairs)}")

    def expected_lines(self, filename: str) -> int | None:
        """The published line count of a file that has no pinned sha256."""
        if not self.lines:
            return None
        for split, n in self.lines.items():
            if any(self.pattern.format(split=split, lang=lang) == filename
                   for lang in self.languages_of(split)):
                return n
        return None

    def tests_with(self, *langs: str) -> tuple[str, ...]:
        """The test splits that have every one of ``langs``."""
        return tuple(s for s in self.test_splits
                     if all(lang in self.languages_of(s) for lang in langs))


MULTI30K_COMMIT = "a3d2e0d26b56f3846f66a952536ffed4e401d05a"

CATALOG: dict[str, CatalogCorpus] = {
    "multi30k": CatalogCorpus(
        name="multi30k",
        url="https://raw.githubusercontent.com/multi30k/dataset/"
        f"{MULTI30K_COMMIT}/data/task1/raw/{{file}}",
        languages=("en", "de", "fr", "cs"),
        splits=("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                "test_2018_flickr"),
        # The WMT17/18 multimodal test sets (same commit folder); Czech only from 2018 on.
        split_languages={"test_2017_flickr": ("en", "de", "fr"),
                         "test_2017_mscoco": ("en", "de", "fr")},
        # No sha256 pinned for these yet (written offline): their published sizes instead.
        lines={"test_2017_flickr": 1000, "test_2017_mscoco": 461, "test_2018_flickr": 1071},
        test_splits=("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                     "test_2018_flickr"),
        sha256={
            "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
            "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
            "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
            "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
            "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
            "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
            "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
            "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
            "test_2016_flickr.en.gz":
                "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
            "test_2016_flickr.de.gz":
                "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
            "test_2016_flickr.fr.gz":
                "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
            "test_2016_flickr.cs.gz":
                "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
        },
    ),
    # Software messages from the gettext catalogs of Debian packages (nmt/data/gettext.py,
    # docs/data.md#gettext-corpora): nothing to download, a copy is built from a machine's
    # /usr/share/locale. Dev and test hold packages that train never saw.
    "gettext": CatalogCorpus(
        name="gettext",
        url=None,
        languages=("en", "zh", "ja", "ko", "de"),
        splits=("train", "dev", "test"),
        pattern="{pair}/{split}.{lang}.gz",
        pairs=("en-zh", "en-ja", "en-ko", "en-de"),
        test_splits=("test",),
        build="python -m nmt.cli gettext output=DIR",
    ),
}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def get_catalog_corpus(name: str) -> CatalogCorpus:
    try:
        return CATALOG[name]
    except KeyError:
        raise DataError(
            f"unknown corpus {name!r}; known corpora: {', '.join(sorted(CATALOG))} "
            "(or use data=files for your own files)"
        ) from None


def fetch_file(corpus: CatalogCorpus, filename: str, cache_dir: str | os.PathLike,
               local_dir: str | os.PathLike | None = None) -> Path:
    """Return a verified local path for one file of a catalog corpus.

    Looks, in order, in the cache ``cache_dir/<corpus>/``, in an existing copy
    under ``local_dir`` (``local_dir/<corpus>/<file>`` or ``local_dir/<file>``;
    ``local_dir`` defaults to $NMT_DATA_DIR), and finally downloads the file.
    Every file is verified wherever it came from: by its pinned sha256, else
    (see ``CatalogCorpus``) by the sha256 recorded at its first use, or, at that
    first use, by its line count.
    """
    return _fetch(corpus, filename, cache_dir, local_dir)[0]


def _fetch(corpus: CatalogCorpus, filename: str, cache_dir: str | os.PathLike,
           local_dir: str | os.PathLike | None) -> tuple[Path, str]:
    """``fetch_file``, and the file's sha256."""
    cached = Path(cache_dir) / corpus.name / filename
    record = cached.parent / (cached.name + ".sha256")  # unpinned files only
    if cached.exists():
        return cached, _verified(cached, corpus, filename, record)

    local_dir = local_dir if local_dir is not None else os.environ.get(DATA_DIR_ENV) or None
    if local_dir is not None:
        for candidate in (Path(local_dir) / corpus.name / filename, Path(local_dir) / filename):
            if candidate.exists():
                return candidate, _verified(candidate, corpus, filename, record)
    if corpus.url is None:
        raise DataError(_no_copy(corpus, filename, cached, local_dir))

    url = corpus.url.format(file=filename)
    cached.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s", url)
    fd, tmp = tempfile.mkstemp(dir=cached.parent, prefix=f".{filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as resp:
            shutil.copyfileobj(resp, out)
        checksum = _verified(Path(tmp), corpus, filename, record, source=url)
        os.replace(tmp, cached)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        where = (f"{Path(local_dir) / corpus.name}/ (from local_dir or ${DATA_DIR_ENV})"
                 if local_dir else f"a directory given as data.local_dir or ${DATA_DIR_ENV}")
        raise DataError(
            f"cannot download {url} ({e}). If this machine is offline, put a copy of "
            f"{filename} in {cached.parent}/ or in {where}; "
            f"for example: export {DATA_DIR_ENV}=/path/to/data with {corpus.name}/{filename} "
            "inside it"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return cached, checksum


def _no_copy(corpus: CatalogCorpus, filename: str, cached: Path,
             local_dir: str | os.PathLike | None) -> str:
    """What to do when a corpus with no download has no copy here: one line."""
    looked = f"{cached}" + (f", {Path(local_dir) / corpus.name / filename}" if local_dir
                            else f"; ${DATA_DIR_ENV} is not set")
    return (f"no copy of {corpus.name}/{filename} (looked in {looked}) and corpus "
            f"{corpus.name!r} has no download: set {DATA_DIR_ENV} (or data.local_dir) to a "
            f"directory with {corpus.name}/{filename} in it, or build one with "
            f"`{corpus.build}` and set {DATA_DIR_ENV}=DIR")


def _verified(path: Path, corpus: CatalogCorpus, filename: str, record: Path,
              source: str | None = None) -> str:
    """Check one catalog file (``source``: its name in messages); return its sha256."""
    name = source or str(path)
    actual = sha256_file(path)
    pinned = corpus.sha256.get(filename)
    if pinned is not None:
        if actual != pinned:
            raise DataError(
                f"{name}: checksum mismatch (sha256 {actual}, expected {pinned}); "
                "the file is corrupt or not the published version: delete it and fetch it again"
            )
        return actual
    if corpus.url is None:  # built locally: no published version to compare with
        _check_gzip(path, name, "the builder writes gzip: build it again")
        return actual
    if record.is_file():
        recorded = (record.read_text().split() or ["(nothing)"])[0]
        if actual != recorded:
            raise DataError(
                f"{name}: checksum mismatch (sha256 {actual}, but the copy first used had "
                f"{recorded}, recorded in {record}); the file changed: delete it and fetch it "
                f"again, or, if this file is the right one, delete {record}"
            )
        return actual
    expected = corpus.expected_lines(filename)
    assert expected is not None, f"catalog file {filename} has neither sha256 nor line count"
    _check_lines(path, name, expected)
    try:
        _write_atomic(record, f"{actual}  {filename}\n")
    except OSError as e:
        log.warning("%s: cannot record its sha256 in %s (%s); its line count is checked "
                    "again next time", name, record, e)
        return actual
    log.warning("%s: no sha256 is pinned for %s in the catalog, so it was checked by its line "
                "count (%d lines, gzip, UTF-8); its sha256 %s is recorded in %s and checked "
                "on every later use", name, filename, expected, actual, record)
    return actual


def _check_lines(path: Path, name: str, expected: int) -> None:
    """A published file with no pinned checksum: gzip, UTF-8, ``expected`` lines."""
    _check_gzip(path, name, "the published file is gzip compressed: delete it and fetch "
                "it again")
    n = sum(1 for _ in read_lines(path, allow_empty=True))
    if n != expected:
        raise DataError(
            f"{name}: {n} lines, but the published file has {expected}; it is incomplete "
            "or not the published version: delete it and fetch it again"
        )


def _check_gzip(path: Path, name: str, advice: str) -> None:
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise DataError(f"{name}: not a gzip file, but {advice}")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_split(corpus: str, split: str, src_lang: str, tgt_lang: str,
                cache_dir: str | os.PathLike, local_dir: str | os.PathLike | None = None
                ) -> ParallelFiles:
    """Verified local paths of both sides of a catalog corpus split."""
    entry = get_catalog_corpus(corpus)
    if src_lang == tgt_lang:
        raise DataError(f"source and target language are both {src_lang!r}")
    src_name = entry.filename(split, src_lang, tgt_lang)
    tgt_name = entry.filename(split, tgt_lang, src_lang)
    src, src_sha = _fetch(entry, src_name, cache_dir, local_dir)
    tgt, tgt_sha = _fetch(entry, tgt_name, cache_dir, local_dir)
    return ParallelFiles(src, tgt, checksum=src_sha + tgt_sha)

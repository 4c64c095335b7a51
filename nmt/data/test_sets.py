"""Test sets by name: the (source, reference) files of a corpus' splits, or a user's own
pair of files; what evaluation and the gradient report read."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from nmt.core.errors import ConfigError, DataError
from nmt.data.catalog import fetch_split, get_catalog_corpus
from nmt.data.corpus import ParallelFiles

log = logging.getLogger(__name__)

ALL_TESTS = "all_tests"


def resolve_test_sets(cfg: Any) -> dict[str, ParallelFiles]:
    """Name -> (source, reference) files from src/ref or from data + split."""
    if cfg.src or cfg.ref:
        if not (cfg.src and cfg.ref):
            raise ConfigError("give both src=FILE and ref=FILE (or neither, to use data/split)")
        for path in (cfg.src, cfg.ref):
            if not Path(path).is_file():
                raise DataError(f"{path}: file not found")
        return {Path(cfg.src).stem: ParallelFiles(Path(cfg.src), Path(cfg.ref))}
    sets = {}
    names = split_names(cfg.split, cfg.data)
    if cfg.data.corpus is not None:  # every name checked before anything is downloaded
        entry = get_catalog_corpus(cfg.data.corpus)
        for split in names:
            entry.filename(split, cfg.data.src_lang)
            entry.filename(split, cfg.data.tgt_lang)
    for split in names:
        data = cfg.data
        if data.corpus is not None:
            sets[split] = fetch_split(data.corpus, split, data.src_lang, data.tgt_lang,
                                      data.root, data.local_dir)
        else:
            sides = (data.files or {}).get(split) or {}
            if not sides.get("src") or not sides.get("tgt"):
                raise ConfigError(f"data.files.{split} is not set (data=files: split is "
                                  "train, valid or test)")
            sets[split] = ParallelFiles(Path(sides["src"]), Path(sides["tgt"]))
    if not sets:
        raise ConfigError("no test set: give split=... or src=... ref=...")
    return sets


def split_names(split: Any, data: Any) -> list[str]:
    """The split names asked for, ``all_tests`` replaced by the corpus' test splits."""
    names = ([] if split is None else [str(split)] if isinstance(split, str | os.PathLike)
             else [str(s) for s in split])
    if ALL_TESTS not in names:
        return names
    if data.get("corpus") is None:
        raise ConfigError(f"split={ALL_TESTS} needs a catalog corpus (data=multi30k_*); with "
                          "your own files name the splits, e.g. split=[valid,test]")
    entry = get_catalog_corpus(data.corpus)
    tests = entry.tests_with(data.src_lang, data.tgt_lang)
    if not tests:
        raise ConfigError(f"corpus {entry.name!r} has no test split with both "
                          f"{data.src_lang!r} and {data.tgt_lang!r}")
    log.info("%s: %s (the test splits of %s with %s and %s)", ALL_TESTS, ", ".join(tests),
             entry.name, data.src_lang, data.tgt_lang)
    expanded: list[str] = []
    for name in names:
        for n in (tests if name == ALL_TESTS else (name,)):
            if n not in expanded:
                expanded.append(n)
    return expanded

"""Preparation at scale: the training filters and their counts, encoding in worker
processes (the same bytes as one), progress, and clear errors from a worker."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_TOKENIZER, files_config, toy_pairs, write_pairs

from nmt.core.errors import ConfigError, DataError
from nmt.data import progress
from nmt.data.encode import encode_split
from nmt.data.filters import CleanConfig, CleanReport, Deduplicator, pair_hashes
from nmt.data.prepare import prepare


def distinct_pairs(n: int) -> list[tuple[str, str]]:
    """``n`` different toy pairs, numbered so that none repeats."""
    return [(f"{en[:-2]} {k} .", f"{de[:-2]} {k} .")
            for k, (en, de) in enumerate(toy_pairs(n, seed=5))]


def prepared_with(tmp_path: Path, train: list[tuple[str, str]], **clean) -> object:
    d = tmp_path / "raw"
    d.mkdir(parents=True, exist_ok=True)
    cfg = files_config(d, tmp_path / "cache", clean={"max_len": 100, "max_ratio": 3.0, **clean})
    cfg["files"]["train"] = write_pairs(d, "train", train)
    cfg["files"]["valid"] = write_pairs(d, "valid", train[:30])  # repeats and all: kept
    del cfg["files"]["test"]
    return prepare(cfg, {**TOY_TOKENIZER, "vocab_size": 80})


def test_repeated_and_copied_pairs_are_dropped_and_counted(tmp_path):
    pairs = distinct_pairs(120)
    repeats = {20: 3, 41: 3, 60: 11, 90: 0}  # line index -> the earlier pair it repeats
    for at, of in repeats.items():
        pairs[at] = pairs[of]
    pairs[50] = (pairs[3][0], pairs[4][1])  # a new pair of two known sides: kept
    copies = [70, 71, 72]
    for at in copies:
        pairs[at] = (pairs[at][0], pairs[at][0])  # the target copies the source
    pairs[10] = ("", "")  # empty: counted as empty, not as the same text
    prepared = prepared_with(tmp_path, pairs)
    report = prepared.datasets["train"].clean_report
    assert (report.duplicate, report.same, report.empty) == (4, 3, 1)
    assert report.kept == 120 - 8 and report.total == 120
    dropped = {at + 1 for at in [*repeats, *copies, 10]}  # 1-based line numbers
    assert set(prepared.datasets["train"].line_numbers.tolist()) == set(range(1, 121)) - dropped
    assert len(prepared.datasets["valid"]) == 30  # dev keeps its repeats
    assert "4 repeating an earlier pair" in str(report)


def test_the_filters_can_be_turned_off(tmp_path):
    pairs = distinct_pairs(40)
    pairs[30], pairs[31] = pairs[2], (pairs[5][0], pairs[5][0])
    report = prepared_with(tmp_path, pairs, dedup=False, drop_same=False
                           ).datasets["train"].clean_report
    assert (report.kept, report.duplicate, report.same) == (40, 0, 0)


def test_the_deduplicator_remembers_across_chunks():
    dedup = Deduplicator()
    first = pair_hashes(["a", "b", "a"], ["x", "y", "x"])
    assert dedup.first(first, np.ones(3, dtype=bool)).tolist() == [True, True, False]
    again = pair_hashes(["b", "c", "c", "d"], ["y", "z", "z", "w"])
    # Candidates only: a pair dropped by another filter is not remembered.
    keep = dedup.first(again, np.array([True, True, True, False]))
    assert keep.tolist() == [False, True, False, False]
    assert dedup.first(pair_hashes(["d"], ["w"]), np.ones(1, dtype=bool)).tolist() == [True]
    assert len(dedup.seen) == 4 and np.all(np.diff(dedup.seen.astype(np.float64)) > 0)


def test_reports_of_older_caches_read():
    old = {"total": 5, "kept": 4, "dropped": 1, "empty": 1, "too_long": 0, "bad_ratio": 0}
    assert CleanReport.from_dict(old) == CleanReport(total=5, kept=4, empty=1)


def test_language_identification_drops_pairs_in_other_languages(tmp_path):
    pairs = distinct_pairs(60)
    pairs[7] = ("A man is riding a bicycle down the street .",
                "Un homme fait du vélo dans la rue avec son chien .")  # French target
    pairs[8] = ("Ein Mann fährt mit dem Fahrrad die Straße entlang .",
                "Ein Mann fährt mit dem Fahrrad die Straße hinunter .")  # German source
    pairs[9] = ("Two dogs are playing in the snow near a tree .",
                "Zwei Hunde spielen im Schnee neben einem Baum .")  # both right: kept
    train = prepared_with(tmp_path, pairs, langid=True, max_ratio=None).datasets["train"]
    # The toy words are no real language (py3langid may drop some of them too): the
    # three pairs above decide.
    kept = set(train.line_numbers.tolist())
    assert 8 not in kept and 9 not in kept and 10 in kept
    assert train.clean_report.language == 60 - len(kept) >= 2


def test_unknown_languages_and_bad_worker_counts_are_refused(tmp_path):
    cfg = files_config(tmp_path, tmp_path / "cache", clean={"langid": True}, src_lang="xx")
    with pytest.raises(ConfigError, match=r"py3langid does not know data\.src_lang=xx"):
        prepare(cfg, TOY_TOKENIZER)
    with pytest.raises(ConfigError, match=r"data\.workers must be a positive"):
        prepare(files_config(tmp_path, tmp_path / "cache", workers=0), TOY_TOKENIZER)


def test_two_workers_write_the_bytes_of_one(toy_prepared, tmp_path):
    pairs = toy_pairs(3000, seed=7)
    pairs[1234] = ("", "Ein hund .")
    write_pairs(tmp_path, "big", pairs)
    files = type(toy_prepared.files["train"])(tmp_path / "big.en", tmp_path / "big.de")
    tok = toy_prepared.src_tokenizer
    out = {}
    for workers in (1, 2):
        out[workers] = tmp_path / f"w{workers}"
        encode_split(files, tok, tok, out[workers], CleanConfig(), workers, chunk_lines=250)
    names = sorted(p.name for p in out[1].iterdir())
    assert names == sorted(p.name for p in out[2].iterdir())
    assert "src.ids" in names and "meta.json" in names
    for name in names:
        assert (out[1] / name).read_bytes() == (out[2] / name).read_bytes(), name


def test_an_error_in_a_worker_names_the_file_and_line(toy_prepared, tmp_path):
    lines = [en for en, _ in toy_pairs(600, seed=3)]
    (tmp_path / "a.en").write_bytes("".join(f"{x}\n" for x in lines).encode()
                                     .replace(lines[450].encode(), b"caf\xe9", 1))
    (tmp_path / "a.de").write_text("".join(f"{x}\n" for x in lines))
    files = type(toy_prepared.files["train"])(tmp_path / "a.en", tmp_path / "a.de")
    tok = toy_prepared.src_tokenizer
    with pytest.raises(DataError, match=r"a\.en, line 451: invalid UTF-8"):
        encode_split(files, tok, tok, tmp_path / "out", CleanConfig(), 2, chunk_lines=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.de", "a.en"]  # no half output


def test_progress_is_logged_off_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="nmt.data.progress"):
        bar = progress.Progress("encoding train", bar=False)
        bar.update(500, 0.25)
        bar.update(500, 0.5)
        assert bar.close() >= 0
    assert "encoding train: 1000 pairs" in caplog.text and "50% read" in caplog.text

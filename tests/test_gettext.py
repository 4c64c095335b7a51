"""The gettext corpora: the builder on tiny catalogs written here, the catalog entry that
reads a copy (data=gettext_en_*), and its errors."""

from __future__ import annotations

import gzip
import json
import re
import struct
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt.core.errors import ConfigError, DataError
from nmt.data.catalog import CATALOG, fetch_split
from nmt.data.corpus import read_parallel
from nmt.data.gettext import build, entry_pairs, language_code, read_mo, split_of

CONF = Path(__file__).resolve().parents[1] / "conf"
UTF8_HEADER = "Content-Type: text/plain; charset=UTF-8\n"


def mo_bytes(entries: dict[str, str], charset: str = "UTF-8", order: str = "<") -> bytes:
    """A compiled catalog (GNU .mo): magic, revision, N, the offsets of the tables of
    originals and translations, then (length, offset) descriptors and NUL-ended strings."""
    items = sorted((k.encode(charset), v.encode(charset)) for k, v in entries.items())
    n = len(items)
    tables_end = 28 + 16 * n
    head = struct.pack(order + "7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, tables_end)
    descriptors, blob = [b"", b""], b""
    for side in (0, 1):
        for item in items:
            descriptors[side] += struct.pack(order + "2I", len(item[side]),
                                             tables_end + len(blob))
            blob += item[side] + b"\x00"
    return head + descriptors[0] + descriptors[1] + blob


def write_mo(locale_dir: Path, locale: str, package: str, entries: dict[str, str],
             charset: str = "UTF-8") -> Path:
    path = locale_dir / locale / "LC_MESSAGES" / f"{package}.mo"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"": f"Content-Type: text/plain; charset={charset}\n"}
    path.write_bytes(mo_bytes({**header, **entries}, charset))
    return path


def read_gz(path: Path) -> list[str]:
    data = path.read_bytes()
    assert data[:2] == b"\x1f\x8b"
    return gzip.decompress(data).decode("utf-8").splitlines()


def test_read_mo_both_byte_orders(tmp_path):
    entries = {"": UTF8_HEADER, "Open": "Öffnen", "ctx\x04Save": "Speichern"}
    for order in "<>":
        path = tmp_path / f"x{order == '>'}.mo"
        path.write_bytes(mo_bytes(entries, order=order))
        assert dict(read_mo(path)) == entries


def test_entries_become_pairs():
    entries = [
        ("", UTF8_HEADER),                                    # header: dropped
        ("menu\x04Open", "Öffnen"),                          # context stripped
        ("%d file\x00%d files", "%d Datei\x00%d Dateien"),  # plural: the singular
        ("Usage: %s\n", "Aufruf: %s\n"),                    # one line, ending in \n
        ("  many \t spaces  ", " viele   Leerzeichen "),    # whitespace collapsed
        ("OK", "OK"),                                        # untranslated
        ("Cancel", ""),                                      # empty translation
        ("line one\nline two", "Zeile eins\nZeile zwei"),   # multi-line
        ("one", "eins\r\nzwei"),                             # multi-line on one side
    ]
    dropped: Counter[str] = Counter()
    pairs = list(entry_pairs(entries, dropped))
    assert pairs == [("Open", "Öffnen"), ("%d file", "%d Datei"), ("Usage: %s", "Aufruf: %s"),
                     ("many spaces", "viele Leerzeichen")]
    assert dropped == {"header": 1, "untranslated": 1, "empty": 1, "multi_line": 2}


def test_split_by_package_is_stable_and_overridable():
    names = [f"package{i}" for i in range(2000)]
    splits = [split_of(name) for name in names]
    assert splits == [split_of(name) for name in names]  # a hash, not a random draw
    assert split_of("gtk30") == split_of("gtk30") and split_of("coreutils") in (
        "train", "dev", "test")
    shares = {s: splits.count(s) / len(names) for s in ("train", "dev", "test")}
    assert 0.03 < shares["dev"] < 0.07 and 0.03 < shares["test"] < 0.07
    # Given lists decide for their packages; the split without a list keeps the hash.
    dev_by_hash = next(name for name, s in zip(names, splits, strict=True) if s == "dev")
    assert split_of(dev_by_hash, test_packages=[dev_by_hash]) == "test"
    assert split_of(dev_by_hash, dev_packages=[]) == "train"
    assert split_of("a", dev_packages=["a"], test_packages=[]) == "dev"


def test_language_codes():
    assert [language_code(x) for x in ("zh_CN", "ja", "ko", "de", "sr@latin", "de_CH.UTF-8")
            ] == ["zh", "ja", "ko", "de", "sr", "de"]


def locale_tree(root: Path) -> Path:
    """Three packages in German and Japanese (EUC-JP), a duplicate pair in the dev package,
    a catalog that is not one, and one whose bytes are not its charset."""
    locale_dir = root / "locale"
    write_mo(locale_dir, "de", "alpha", {"Open": "Öffnen", "Save": "Speichern", "OK": "OK"})
    write_mo(locale_dir, "de", "beta", {"Open": "Öffnen", "Quit": "Beenden",
                                        "two\nlines": "zwei\nZeilen"})
    write_mo(locale_dir, "de", "gamma", {"ctx\x04Close": "Schließen"})
    write_mo(locale_dir, "ja", "alpha", {"Open": "開く", "Save": "保存"}, charset="EUC-JP")
    write_mo(locale_dir, "ja", "beta", {"Quit": "終了"})
    write_mo(locale_dir, "ja", "gamma", {"Close": "閉じる"})
    (locale_dir / "ja" / "LC_MESSAGES" / "broken.mo").write_bytes(b"not a catalog")
    bad = mo_bytes({"": UTF8_HEADER, "Help": "ヘルプ"}).replace("ヘルプ".encode(), b"\xff" * 9)
    (locale_dir / "de" / "LC_MESSAGES" / "delta.mo").write_bytes(bad)
    return locale_dir


def test_build_writes_aligned_gzip_by_package(tmp_path):
    locale_dir = locale_tree(tmp_path)
    summary = build(tmp_path / "out", locale_dir, ["de", "ja"], dev_packages=["beta"],
                    test_packages=["gamma"])
    root = tmp_path / "out" / "gettext"
    assert sorted(p.name for p in root.iterdir()) == ["en-de", "en-ja"]  # no temporary left
    expected = {
        "de": {"train": [("Open", "Öffnen"), ("Save", "Speichern")],
               "dev": [("Quit", "Beenden")],  # Open/Öffnen is a pair of train
               "test": [("Close", "Schließen")]},
        "ja": {"train": [("Open", "開く"), ("Save", "保存")], "dev": [("Quit", "終了")],
               "test": [("Close", "閉じる")]},
    }
    for code, splits in expected.items():
        for split, pairs in splits.items():
            src = read_gz(root / f"en-{code}" / f"{split}.en.gz")
            tgt = read_gz(root / f"en-{code}" / f"{split}.{code}.gz")
            assert list(zip(src, tgt, strict=True)) == pairs
    assert summary["pairs"] == {"en-de": {"train": 2, "dev": 1, "test": 1},
                                "en-ja": {"train": 2, "dev": 1, "test": 1}}
    assert summary["packages"]["en-de"] == {"train": 1, "dev": ["beta"], "test": ["gamma"]}
    assert summary["dropped"]["en-de"] == {"header": 3, "multi_line": 1, "empty": 0,
                                           "untranslated": 1, "duplicate": 1}
    assert summary["skipped"] == {"en-de": {"de/LC_MESSAGES/delta.mo": "not valid UTF-8 "
                                            "(invalid start byte)"},
                                  "en-ja": {"ja/LC_MESSAGES/broken.mo": "not a gettext "
                                            "catalog (.mo)"}}
    assert summary["skipped_catalogs"] == 2
    json.dumps(summary)
    # Rebuilt: the copy is replaced whole, byte for byte the same (gzip without time).
    before = {p.name: p.read_bytes() for p in (root / "en-de").iterdir()}
    build(tmp_path / "out", locale_dir, ["de"], dev_packages=["beta"], test_packages=["gamma"])
    assert {p.name: p.read_bytes() for p in (root / "en-de").iterdir()} == before
    assert sorted(p.name for p in root.iterdir()) == ["en-de", "en-ja"]


def test_build_is_read_by_the_catalog(tmp_path, monkeypatch):
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    build(tmp_path / "out", locale_tree(tmp_path), ["ja"], dev_packages=["beta"],
          test_packages=["gamma"])
    for split, n in (("train", 2), ("dev", 1), ("test", 1)):
        files = fetch_split("gettext", split, "en", "ja", tmp_path / "cache", tmp_path / "out")
        assert files.src == tmp_path / "out" / "gettext" / "en-ja" / f"{split}.en.gz"
        assert len(list(read_parallel(files.src, files.tgt))) == n
    backwards = fetch_split("gettext", "test", "ja", "en", tmp_path / "cache", tmp_path / "out")
    assert backwards.src.name == "test.ja.gz" and backwards.src.parent.name == "en-ja"


def test_the_gettext_command(tmp_path, capsys):
    from nmt.cli.commands import gettext

    locale_dir = locale_tree(tmp_path)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("gettext", [f"output={tmp_path / 'out'}", f"locale_dir={locale_dir}",
                                  "languages=[de]", "test_packages=[gamma]"])
    assert OmegaConf.to_container(cfg)["dev_packages"] is None
    summary = gettext(cfg)
    assert json.loads(capsys.readouterr().out) == summary
    assert summary["packages"]["en-de"]["test"] == ["gamma"]
    assert sum(summary["pairs"]["en-de"].values()) == 4


@pytest.mark.parametrize(("languages", "match"), [
    (["de", "fr"], "no catalogs for fr; locales with catalogs: de, ja$"),
    (["en_GB"], "en_GB is English"),
    (["zh_CN", "zh_TW"], "zh_CN and zh_TW are both 'zh'"),
    ([], "give at least one locale"),
])
def test_builder_errors(tmp_path, languages, match):
    with pytest.raises((ConfigError, DataError), match=match):
        build(tmp_path / "out", locale_tree(tmp_path), languages)
    assert not (tmp_path / "out").exists()


def test_builder_errors_in_the_arguments(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such directory"):
        build(tmp_path / "out", tmp_path / "nowhere", ["de"])
    with pytest.raises(ConfigError, match=r"both list b$"):
        build(tmp_path / "out", tmp_path, ["de"], dev_packages=["a", "b"], test_packages=["b"])
    assert not (tmp_path / "out").exists()


def test_a_missing_copy_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"no copy of gettext/en-zh/train\.en\.gz \(looked in "
                       r".*; \$NMT_DATA_DIR is not set\).*set NMT_DATA_DIR \(or data.local_dir"
                       r"\) to a directory with gettext/en-zh/train.en.gz in it, or build one "
                       r"with `python -m nmt.cli gettext output=DIR`") as error:
        fetch_split("gettext", "train", "en", "zh", tmp_path / "cache")
    assert "\n" not in str(error.value)
    monkeypatch.setenv("NMT_DATA_DIR", str(tmp_path / "copy"))
    copy = re.escape(str(tmp_path / "copy" / "gettext" / "en-ko" / "dev"))
    with pytest.raises(DataError, match=f"looked in .*, {copy}"):
        fetch_split("gettext", "dev", "ko", "en", tmp_path / "cache")
    with pytest.raises(DataError, match="no language pair zh-ja; its pairs: en-zh, en-ja, "):
        fetch_split("gettext", "dev", "zh", "ja", tmp_path / "cache")
    plain = tmp_path / "copy" / "gettext" / "en-de"
    plain.mkdir(parents=True)
    for lang in ("en", "de"):
        (plain / f"test.{lang}.gz").write_text("not gzip\n")
    with pytest.raises(DataError, match=r"test\.en\.gz: not a gzip file, but the builder writes"):
        fetch_split("gettext", "test", "en", "de", tmp_path / "cache")


def shared_gettext(shared_data: Path) -> Path:
    if not (shared_data / "gettext" / "en-zh").is_dir():
        pytest.skip(f"no offline copy of gettext under {shared_data}")
    return shared_data


def test_shared_copy_is_found(shared_data, tmp_path):
    local = shared_gettext(shared_data)
    entry = CATALOG["gettext"]
    for pair in entry.pairs:
        tgt = pair.split("-")[1]
        for split in entry.splits:
            files = fetch_split("gettext", split, "en", tgt, tmp_path, local_dir=local)
            assert files.tgt == local / "gettext" / pair / f"{split}.{tgt}.gz"
    files = fetch_split("gettext", "dev", "en", "zh", tmp_path, local_dir=local)
    assert len(list(read_parallel(files.src, files.tgt))) > 100
    assert not list(tmp_path.rglob("*"))  # nothing cached or recorded


def test_prepare_gettext_en_zh(shared_data, tmp_path):
    """data=gettext_en_zh end to end on the shared copy, with a small tokenizer (not under
    2000 pieces: Chinese needs about 1,400 characters for the 0.9995 coverage of auto)."""
    from nmt.data.prepare import prepare
    from nmt.data.summary import describe

    local = shared_gettext(shared_data)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("prepare", ["data=gettext_en_zh", f"data.root={tmp_path}",
                                  f"data.local_dir={local}", "data.workers=1",
                                  "tokenizer.vocab_size=2000",
                                  "tokenizer.input_sentence_size=2000"])
    containers = [OmegaConf.to_container(c, resolve=True) for c in (cfg.data, cfg.tokenizer)]
    summary = describe(prepare(*containers), 4096)
    dev = fetch_split("gettext", "dev", "en", "zh", tmp_path, local_dir=local)
    assert summary["valid"]["pairs"] == len(list(read_parallel(dev.src, dev.tgt)))
    assert summary["train"]["pairs"] > 10 * summary["valid"]["pairs"]
    clean = summary["train"]["clean"]  # the default cleaning drops little of it (1.3%)
    assert clean["kept"] == summary["train"]["pairs"] and clean["dropped"] < 0.05 * clean["total"]

"""Corpora, tokenizers, the encoded cache and the data module."""

from __future__ import annotations

import gzip
import io
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    MULTI30K_TESTS,
    TOY_TOKENIZER,
    fake_multi30k_tests,
    files_config,
    toy_pairs,
    write_pairs,
    write_side,
)

from nmt.core.errors import ConfigError, DataError, TokenizerError
from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data import catalog as catalog_mod
from nmt.data import encode as encode_mod
from nmt.data import tokenizer as tokenizer_mod
from nmt.data.catalog import CATALOG, CatalogCorpus, fetch_file, fetch_split, sha256_file
from nmt.data.corpus import read_lines, read_parallel
from nmt.data.datamodule import NMTDataModule
from nmt.data.dataset import Batch, collate
from nmt.data.filters import CleanConfig
from nmt.data.prepare import prepare
from nmt.data.summary import describe
from nmt.data.tokenizer import Tokenizer, TokenizerConfig, train_sentencepiece

# --- reading ---------------------------------------------------------------------------------


def test_plain_and_gzip_read_the_same(tmp_path):
    lines = ["Ein Hund läuft.", "", "  zwei  Leerzeichen ", "Ende"]
    plain = write_side(tmp_path / "a.txt", lines)
    packed = write_side(tmp_path / "a.txt.weird-name", lines, gz=True)
    assert list(read_lines(plain)) == lines
    assert list(read_lines(packed)) == lines  # gzip found by content, not by name


def test_crlf_and_bom_are_stripped(tmp_path):
    p = tmp_path / "win.txt"
    p.write_bytes("\ufeffeins\r\nzwei\r\n".encode())
    assert list(read_lines(p)) == ["eins", "zwei"]


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt: file not found"):
        list(read_lines(tmp_path / "nope.txt"))


def test_empty_file(tmp_path):
    p = write_side(tmp_path / "empty.txt", [])
    with pytest.raises(DataError, match=r"empty\.txt: the file is empty"):
        list(read_lines(p))


def test_invalid_utf8_names_file_and_line(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("gut\nauch gut\nschl\xf6ssel\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 3: invalid UTF-8"):
        list(read_lines(p))


def test_invalid_utf8_inside_gzip(tmp_path):
    p = tmp_path / "bad.gz"
    p.write_bytes(gzip.compress(b"ok\n\xff\xfe\n"))
    with pytest.raises(DataError, match=r"bad\.gz, line 2: invalid UTF-8"):
        list(read_lines(p))


def test_corrupt_gzip(tmp_path):
    p = tmp_path / "broken.gz"
    text = "".join(f"line {i} {i * i}\n" for i in range(5000)).encode()
    p.write_bytes(gzip.compress(text)[:2000])
    with pytest.raises(DataError, match=r"broken\.gz, after line \d+: cannot read"):
        list(read_lines(p))


@pytest.mark.parametrize(("n_src", "n_tgt"), [(5, 3), (3, 5)])
def test_misaligned_sides_give_both_counts(tmp_path, n_src, n_tgt):
    src = write_side(tmp_path / "s.txt", [f"s{i}" for i in range(n_src)])
    tgt = write_side(tmp_path / "t.txt", [f"t{i}" for i in range(n_tgt)])
    with pytest.raises(DataError, match=rf"s\.txt has {n_src} lines but .*t\.txt has {n_tgt}"):
        list(read_parallel(src, tgt))


# --- cleaning --------------------------------------------------------------------------------


@pytest.mark.parametrize(("lengths", "reason"), [
    ((0, 4), "empty"), ((4, 0), "empty"), ((101, 100), "too_long"), ((3, 10), "bad_ratio"),
    ((10, 3), "bad_ratio"), ((10, 30), None), ((100, 100), None),
])
def test_clean_reasons(lengths, reason):
    assert CleanConfig(max_len=100, max_ratio=3.0).reason(*lengths) == reason


def test_clean_filters_can_be_disabled():
    cfg = CleanConfig(drop_empty=False, max_len=None, max_ratio=None)
    assert cfg.reason(0, 5) is None
    assert cfg.reason(1000, 1) is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_len": 0}, "max_len must be a positive"), ({"max_ratio": 0.5}, "max_ratio must be >= 1")
])
def test_clean_config_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        CleanConfig(**kwargs)


def test_cleaning_report_and_dev_untouched(tmp_path):
    pairs = toy_pairs(200)
    pairs[3] = ("", "Ein hund .")  # empty source
    pairs[7] = ("A dog .", "")  # empty target
    pairs[11] = ("A man sees . " * 40, "Ein mann sieht . " * 40)  # too long
    pairs[13] = ("Yes .", "Ein mann sieht einen großen baum im park und das rote auto .")  # ratio
    d = tmp_path / "raw"
    d.mkdir()
    write_pairs(d, "train", pairs)
    write_pairs(d, "valid", pairs[:20])  # the same bad pairs, which dev must keep
    write_pairs(d, "test", pairs[:20])
    cfg = files_config(d, tmp_path / "cache",
                       clean={"max_len": 60, "max_ratio": 2.5, "dedup": False})
    cfg["files"]["train"] = {"src": str(d / "train.en"), "tgt": str(d / "train.de")}
    prepared = prepare(cfg, {**TOY_TOKENIZER, "vocab_size": 80})
    report = prepared.datasets["train"].clean_report
    assert (report.total, report.empty, report.too_long, report.bad_ratio) == (200, 2, 1, 1)
    assert report.kept == 196 and report.dropped == 4
    assert "kept 196 of 200 pairs; dropped 4 (2 with an empty side" in str(report)
    lines = prepared.datasets["train"].line_numbers
    assert not {4, 8, 12, 14} & set(lines.tolist()) and len(lines) == 196
    valid = prepared.datasets["valid"]
    assert len(valid) == 20 and valid.line_numbers.tolist() == list(range(1, 21))
    assert valid.src_lengths[3] == 0 and valid.tgt_lengths[7] == 0


# --- catalog ---------------------------------------------------------------------------------


def _fake_catalog(tmp_path: Path, content: bytes = b"hallo\n") -> tuple[CatalogCorpus, Path]:
    origin = tmp_path / "origin"
    origin.mkdir()
    (origin / "train.en.gz").write_bytes(gzip.compress(content))
    entry = CatalogCorpus(
        name="fake", url="https://example.invalid/{file}", languages=("en", "de"),
        splits=("train",), sha256={"train.en.gz": sha256_file(origin / "train.en.gz")},
    )
    return entry, origin


def test_catalog_local_copy_is_verified_and_used(tmp_path, monkeypatch):
    entry, origin = _fake_catalog(tmp_path)
    local = tmp_path / "copy"
    (local / "fake").mkdir(parents=True)
    (local / "fake" / "train.en.gz").write_bytes((origin / "train.en.gz").read_bytes())
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", _no_network)
    path = fetch_file(entry, "train.en.gz", tmp_path / "cache", local_dir=local)
    assert path == local / "fake" / "train.en.gz"
    monkeypatch.setenv("NMT_DATA_DIR", str(local))  # the environment variable works too
    assert fetch_file(entry, "train.en.gz", tmp_path / "cache") == path


def test_catalog_checksum_mismatch(tmp_path):
    entry, _ = _fake_catalog(tmp_path)
    local = tmp_path / "copy"
    local.mkdir()
    (local / "train.en.gz").write_bytes(gzip.compress(b"something else\n"))
    with pytest.raises(DataError, match=r"train\.en\.gz: checksum mismatch .* delete it"):
        fetch_file(entry, "train.en.gz", tmp_path / "cache", local_dir=local)


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("no network")


def test_catalog_offline_without_copy_says_what_to_do(tmp_path, monkeypatch):
    entry, _ = _fake_catalog(tmp_path)
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DataError, match=r"cannot download .*train\.en\.gz.*NMT_DATA_DIR"):
        fetch_file(entry, "train.en.gz", tmp_path / "cache")
    assert not list((tmp_path / "cache" / "fake").iterdir())  # no partial file left


def test_catalog_download_is_cached_and_verified(tmp_path, monkeypatch):
    entry, origin = _fake_catalog(tmp_path)
    payload = (origin / "train.en.gz").read_bytes()
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", fake_urlopen)
    path = fetch_file(entry, "train.en.gz", tmp_path / "cache")
    assert path == tmp_path / "cache" / "fake" / "train.en.gz"
    assert calls == ["https://example.invalid/train.en.gz"]
    assert fetch_file(entry, "train.en.gz", tmp_path / "cache") == path
    assert len(calls) == 1  # second time from the cache
    assert not list(path.parent.glob("*.sha256"))  # a pinned checksum needs no record


def test_catalog_download_with_wrong_content_is_rejected(tmp_path, monkeypatch):
    entry, _ = _fake_catalog(tmp_path)
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen",
                        lambda url, timeout: io.BytesIO(b"<html>not found</html>"))
    with pytest.raises(DataError, match="checksum mismatch"):
        fetch_file(entry, "train.en.gz", tmp_path / "cache")
    assert not (tmp_path / "cache" / "fake" / "train.en.gz").exists()


@pytest.mark.parametrize(("corpus", "split", "src", "tgt", "match"), [
    ("nope", "train", "en", "de", "unknown corpus 'nope'; known corpora: gettext, multi30k"),
    ("multi30k", "dev", "en", "de", "no split 'dev'; valid splits: train, val, test_2016_flickr, "
     "test_2017_flickr, test_2017_mscoco, test_2018_flickr$"),
    ("multi30k", "train", "en", "xx", "no language 'xx'; valid languages: en, de, fr, cs"),
    ("multi30k", "test_2017_flickr", "en", "cs",
     "split 'test_2017_flickr' has no language 'cs'; its languages: en, de, fr$"),
    ("multi30k", "test_2017_mscoco", "cs", "de",
     "split 'test_2017_mscoco' has no language 'cs'; its languages: en, de, fr$"),
    ("multi30k", "train", "en", "en", "both 'en'"),
])
def test_catalog_bad_names(tmp_path, corpus, split, src, tgt, match):
    with pytest.raises(DataError, match=match):
        fetch_split(corpus, split, src, tgt, tmp_path)


def test_every_catalog_file_has_a_checksum_or_a_line_count():
    for entry in CATALOG.values():
        assert set(entry.split_languages) <= set(entry.splits) >= set(entry.test_splits)
        if entry.url is None:  # built locally, checked by form only (tests/test_gettext.py)
            assert entry.build and not entry.sha256 and not entry.lines
            continue
        for split in entry.splits:
            for lang in entry.languages_of(split):
                name = entry.filename(split, lang)
                # exactly one of the two: a pinned file is never checked by line count
                assert (name in entry.sha256) != (entry.expected_lines(name) is not None)


def test_multi30k_offline_copy_matches_catalog(shared_data, tmp_path):
    entry = CATALOG["multi30k"]
    pinned = [s for s in entry.splits if entry.filename(s, "en") in entry.sha256]
    assert pinned == ["train", "val", "test_2016_flickr"]
    assert len(entry.sha256) == len(pinned) * len(entry.languages)
    for split in pinned:
        files = fetch_split("multi30k", split, "en", "de", tmp_path, local_dir=shared_data)
        n = sum(1 for _ in read_parallel(files.src, files.tgt))
        assert n == {"train": 29000, "val": 1014, "test_2016_flickr": 1000}[split]
    assert not list(tmp_path.rglob("*.sha256"))


# --- catalog files with no pinned checksum: published line count, then trust on first use -----

def test_multi30k_test_sets_are_in_the_catalog():
    entry = CATALOG["multi30k"]
    assert entry.test_splits == ("test_2016_flickr", *MULTI30K_TESTS)
    assert entry.lines == MULTI30K_TESTS
    assert entry.tests_with("en", "de") == entry.test_splits
    assert entry.tests_with("en", "cs") == ("test_2016_flickr", "test_2018_flickr")
    assert entry.url.format(file=entry.filename("test_2018_flickr", "cs")) == (
        f"https://raw.githubusercontent.com/multi30k/dataset/{catalog_mod.MULTI30K_COMMIT}"
        "/data/task1/raw/test_2018_flickr.cs.gz")


@pytest.mark.parametrize("split", list(MULTI30K_TESTS))
def test_unpinned_local_copy_checked_by_line_count_then_by_recorded_sha256(
        split, tmp_path, monkeypatch, caplog):
    local = fake_multi30k_tests(tmp_path / "copy")
    cache = tmp_path / "cache"
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", _no_network)
    with caplog.at_level("WARNING", logger="nmt.data.catalog"):
        files = fetch_split("multi30k", split, "en", "de", cache, local_dir=local)
    assert files.src == local / "multi30k" / f"{split}.en.gz"
    assert files.checksum == sha256_file(files.src) + sha256_file(files.tgt)
    record = cache / "multi30k" / f"{split}.de.gz.sha256"
    assert record.read_text() == f"{sha256_file(files.tgt)}  {split}.de.gz\n"
    [msg, _] = [r.getMessage() for r in caplog.records]
    assert f"no sha256 is pinned for {split}.en.gz in the catalog, so it was checked by its " \
           f"line count ({MULTI30K_TESTS[split]} lines, gzip, UTF-8)" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="nmt.data.catalog"):
        again = fetch_split("multi30k", split, "en", "de", cache, local_dir=local)
    assert again == files and not caplog.records  # the recorded sha256 from now on


# Named cases: ids made of gzip bytes (which carry the time) differ between xdist workers.
@pytest.mark.parametrize(("content", "match"), [
    (gzip.compress(b"eins\n" * 460), r"test_2017_mscoco\.de\.gz: 460 lines, but the published "
     r"file has 461; it is incomplete or not the published version: delete it"),
    (b"eins\n" * 461, r"test_2017_mscoco\.de\.gz: not a gzip file, .* delete it"),
    (gzip.compress(b"eins\n\xff\n" * 200), r"test_2017_mscoco\.de\.gz, line 2: invalid UTF-8"),
], ids=["a-line-short", "not-gzip", "invalid-utf8"])
def test_unpinned_file_with_wrong_content_is_refused(tmp_path, content, match):
    local = fake_multi30k_tests(tmp_path / "copy")
    (local / "multi30k" / "test_2017_mscoco.de.gz").write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        fetch_split("multi30k", "test_2017_mscoco", "en", "de", tmp_path / "cache", local)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "cache" / "multi30k" / "test_2017_mscoco.de.gz.sha256").exists()


def test_unpinned_file_changed_after_first_use_is_refused(tmp_path):
    local = fake_multi30k_tests(tmp_path / "copy")
    fetch_split("multi30k", "test_2018_flickr", "en", "de", tmp_path / "cache", local)
    pairs = toy_pairs(1071, seed=99)  # the right size, other sentences
    write_side(local / "multi30k" / "test_2018_flickr.de.gz", [de for _, de in pairs], gz=True)
    record = tmp_path / "cache" / "multi30k" / "test_2018_flickr.de.gz.sha256"
    with pytest.raises(DataError, match=rf"test_2018_flickr\.de\.gz: checksum mismatch .*but the "
                       rf"copy first used had .*recorded in {record}.*delete {record}$"):
        fetch_split("multi30k", "test_2018_flickr", "en", "de", tmp_path / "cache", local)
    record.unlink()  # the user's way to accept the new file
    fetch_split("multi30k", "test_2018_flickr", "en", "de", tmp_path / "cache", local)


def test_unpinned_file_offline_without_copy_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", _no_network)
    with pytest.raises(DataError, match=r"^cannot download https://raw\.githubusercontent\.com/"
                       r"multi30k/dataset/.*/test_2017_flickr\.en\.gz \(.*no network.*\)\. If "
                       r"this machine is offline, put a copy of test_2017_flickr\.en\.gz in "
                       r".*NMT_DATA_DIR=/path/to/data with multi30k/test_2017_flickr\.en\.gz") as e:
        fetch_split("multi30k", "test_2017_flickr", "en", "de", tmp_path / "cache")
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "cache" / "multi30k").iterdir())


def test_unpinned_download_is_checked_recorded_and_cached(tmp_path, monkeypatch):
    origin = fake_multi30k_tests(tmp_path / "origin", langs=("en", "fr"))
    served = {"test_2017_flickr.fr.gz": gzip.compress(b"falsch\n" * 999)}  # one line short

    def fake_urlopen(url, timeout):
        name = url.rsplit("/", 1)[1]
        return io.BytesIO(served.get(name) or (origin / "multi30k" / name).read_bytes())

    monkeypatch.delenv("NMT_DATA_DIR", raising=False)
    monkeypatch.setattr(catalog_mod.urllib.request, "urlopen", fake_urlopen)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"^https://.*/test_2017_flickr\.fr\.gz: 999 lines, but "
                       "the published file has 1000"):
        fetch_split("multi30k", "test_2017_flickr", "en", "fr", cache)
    assert sorted(p.name for p in (cache / "multi30k").iterdir()) == [
        "test_2017_flickr.en.gz", "test_2017_flickr.en.gz.sha256"]  # no partial fr file
    del served["test_2017_flickr.fr.gz"]
    files = fetch_split("multi30k", "test_2017_flickr", "en", "fr", cache)
    assert files.tgt == cache / "multi30k" / "test_2017_flickr.fr.gz"
    assert files.tgt.read_bytes() == (origin / "multi30k" / "test_2017_flickr.fr.gz").read_bytes()
    assert (cache / "multi30k" / "test_2017_flickr.fr.gz.sha256").is_file()


# --- tokenizers ------------------------------------------------------------------------------


def test_tokenizer_special_ids_and_round_trip(toy_prepared):
    tok = toy_prepared.src_tokenizer
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (0, 1, 2, 3)
    texts = [s for pair in toy_pairs(50, seed=9) for s in pair]
    assert tok.decode(tok.encode(texts)) == texts
    assert Tokenizer(tok.model_proto) == tok  # rebuilt from bytes alone (checkpoints)


def test_tokenizer_decode_skips_special_ids(toy_prepared):
    tok = toy_prepared.src_tokenizer
    ids = tok.encode(["Ein hund ."])[0]
    assert tok.decode([[BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]]) == ["Ein hund ."]


def test_tokenizer_rejects_other_special_ids(tmp_path):
    import sentencepiece as spm

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([s for p in toy_pairs(100) for s in p]), model_writer=writer,
        vocab_size=40, minloglevel=2)  # default ids: unk 0, bos 1, eos 2, no pad
    path = tmp_path / "other.model"
    path.write_bytes(writer.getvalue())
    with pytest.raises(TokenizerError, match=r"other\.model: SentencePiece model has special ids"):
        Tokenizer.load(path)


def test_tokenizer_not_a_model(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match=r"junk\.model: not a valid SentencePiece model"):
        Tokenizer.load(tmp_path / "junk.model")
    with pytest.raises(TokenizerError, match="SentencePiece model not found"):
        Tokenizer.load(tmp_path / "missing.model")


def test_tokenizer_vocab_too_large():
    match = r"vocab_size=5000 is too large .* lower tokenizer\.vocab_size to at most \d+"
    with pytest.raises(TokenizerError, match=match):
        train_sentencepiece([s for p in toy_pairs(50) for s in p], TokenizerConfig(vocab_size=5000))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model_type": "wordpiece"}, "model_type 'wordpiece'; valid choices: unigram, bpe"),
    ({"vocab_size": 3}, "vocab_size must be > 4"),
    ({"character_coverage": 0}, "character_coverage must be auto or in"),
])
def test_tokenizer_config_errors(kwargs, match):
    with pytest.raises(TokenizerError, match=match):
        TokenizerConfig(**kwargs)


def test_tokenizer_trained_once_and_retrained_on_change(toy_dir, tmp_path, monkeypatch):
    cfg = files_config(toy_dir, tmp_path)
    first = prepare(cfg, TOY_TOKENIZER)

    def must_not_train(*args, **kwargs):
        raise AssertionError("trained again although nothing changed")

    monkeypatch.setattr(tokenizer_mod, "train_sentencepiece", must_not_train)
    again = prepare(cfg, TOY_TOKENIZER)
    assert again.src_tokenizer == first.src_tokenizer
    with pytest.raises(AssertionError, match="trained again"):
        prepare(cfg, {**TOY_TOKENIZER, "vocab_size": 70})  # a changed setting retrains


def test_separate_tokenizers(toy_dir, tmp_path):
    prepared = prepare(files_config(toy_dir, tmp_path),
                       {**TOY_TOKENIZER, "joint": False, "vocab_size": 40})
    src, tgt = prepared.src_tokenizer, prepared.tgt_tokenizer
    assert src != tgt and not prepared.joint
    def pieces(tok):
        return "".join(tok.sp.id_to_piece(i) for i in range(tok.vocab_size))

    assert "ä" in pieces(tgt) and "ä" not in pieces(src)  # each side learned its own alphabet
    de = toy_pairs(5)[0][1]
    assert tgt.decode(tgt.encode([de])) == [de]


# --- encoded cache ---------------------------------------------------------------------------


def test_encoded_split_decodes_to_the_text(toy_prepared, toy_dir):
    valid = toy_prepared.datasets["valid"]
    tok = toy_prepared.tgt_tokenizer
    refs = list(read_lines(toy_dir / "valid.de"))
    assert len(valid) == len(refs) == 40
    assert tok.decode([valid[i][2].tolist() for i in range(len(valid))]) == refs
    assert isinstance(valid.src_ids, np.memmap)


def test_second_prepare_does_not_encode(toy_data_cfg, toy_prepared):
    again = prepare(toy_data_cfg, TOY_TOKENIZER)
    assert again.encoded_sentences == 0
    assert again.datasets["train"].directory == toy_prepared.datasets["train"].directory


def test_interrupted_encoding_leaves_nothing(toy_dir, tmp_path, monkeypatch):
    cfg = files_config(toy_dir, tmp_path)
    prepared = prepare(cfg, TOY_TOKENIZER)
    calls = 0
    real_encode = Tokenizer.encode

    def failing_encode(self, texts, num_threads=-1):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return real_encode(self, texts, num_threads)

    target = prepared.datasets["train"].directory
    encoded_root = target.parent.parent
    import shutil

    shutil.rmtree(encoded_root)
    monkeypatch.setattr(Tokenizer, "encode", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        encode_mod.encode_split(prepared.files["train"], prepared.src_tokenizer,
                                 prepared.tgt_tokenizer, target, chunk_lines=100)
    assert not target.exists()
    assert not list(target.parent.iterdir())  # no temporary directory either


def test_collate_adds_bos_eos_and_pads():
    examples = [(7, np.array([5, 6, 7]), np.array([8])), (2, np.array([9]), np.array([10, 11]))]
    batch = collate(examples)
    assert isinstance(batch, Batch)
    assert batch.src.tolist() == [[5, 6, 7, EOS_ID], [9, EOS_ID, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [4, 2]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, PAD_ID], [BOS_ID, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, PAD_ID], [10, 11, EOS_ID]]
    assert batch.indices.tolist() == [7, 2]
    assert batch.src.dtype == torch.long


# --- data module and summary -----------------------------------------------------------------


def test_datamodule_batches(toy_data_cfg, toy_prepared):
    dm = NMTDataModule(toy_data_cfg, TOY_TOKENIZER, max_tokens=300, seed=3)
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        assert batch.src.numel() + batch.tgt_in.numel() <= 300 or len(batch.indices) == 1
        seen.extend(batch.indices.tolist())
    assert sorted(seen) == list(range(len(toy_prepared.datasets["train"])))
    val = [i for b in dm.val_dataloader() for i in b.indices.tolist()]
    assert sorted(val) == list(range(40))


def test_datamodule_config_errors(toy_dir, tmp_path):
    cfg = files_config(toy_dir, tmp_path)
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['colour'\]; valid keys: name"):
        NMTDataModule({**cfg, "colour": "red"}, TOY_TOKENIZER)
    with pytest.raises(ConfigError, match="max_tokens must be positive"):
        NMTDataModule(cfg, TOY_TOKENIZER, max_tokens=0)
    with pytest.raises(ConfigError, match=r"data\.tgt_lang is not set"):
        NMTDataModule({**cfg, "tgt_lang": "???"}, TOY_TOKENIZER)
    with pytest.raises(ConfigError, match="unknown split"):
        NMTDataModule({**cfg, "files": {"training": cfg["files"]["train"]}}, TOY_TOKENIZER)
    missing = {**cfg, "files": {**cfg["files"], "valid": {"src": "/no/such.en", "tgt": "x"}}}
    with pytest.raises(DataError, match=r"/no/such\.en: file not found \(data\.files\.valid\.src"):
        prepare(missing, TOY_TOKENIZER)


def test_describe(toy_prepared):
    summary = describe(toy_prepared, max_tokens=400)
    assert summary["train"]["pairs"] == 600
    assert summary["valid"]["pairs"] == 40
    assert 0 <= summary["train"]["padding_ratio"] < 0.2
    json.dumps(summary)

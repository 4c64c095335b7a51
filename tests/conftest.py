"""Shared fixtures: a toy parallel corpus and a tiny SentencePiece model, built once per run.

The toy "German" is a word-by-word mapping of a small English grammar, so it is
learnable by a tiny model in seconds. Nothing here touches the network.
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import pytest

# One torch thread a test process (and the processes it starts) unless the environment
# says otherwise: the tensors here are tiny, pytest-xdist runs a process per core, and on
# a busy machine extra threads only spin (a toy training took 50x as long with two).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import nmt  # noqa: F401  (first: makes an installed torchvision importable for lightning)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

SUBJECTS = {"a man": "ein mann", "a woman": "eine frau", "the dog": "der hund",
            "two children": "zwei kinder", "a girl": "ein mädchen", "the cat": "die katze"}
VERBS = {"sees": "sieht", "holds": "hält", "likes": "mag", "finds": "findet"}
OBJECTS = {"a ball": "einen ball", "the red car": "das rote auto",
           "a big tree": "einen großen baum", "the water": "das wasser",
           "a small boat": "ein kleines boot"}
PLACES = {"": "", " in the park": " im park", " on the street": " auf der straße",
          " at the beach": " am strand"}


def toy_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        s, v, o, p = (rng.choice(list(d)) for d in (SUBJECTS, VERBS, OBJECTS, PLACES))
        en = f"{s} {v} {o}{p} ."
        de = f"{SUBJECTS[s]} {VERBS[v]} {OBJECTS[o]}{PLACES[p]} ."
        pairs.append((en.capitalize(), de.capitalize()))
    return pairs


def write_side(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_pairs(directory: Path, split: str, pairs: list[tuple[str, str]], gz: bool = False
                ) -> dict[str, str]:
    suffix = ".gz" if gz else ""
    src = write_side(directory / f"{split}.en{suffix}", [s for s, _ in pairs], gz)
    tgt = write_side(directory / f"{split}.de{suffix}", [t for _, t in pairs], gz)
    return {"src": str(src), "tgt": str(tgt)}


MULTI30K_TESTS = {"test_2017_flickr": 1000, "test_2017_mscoco": 461, "test_2018_flickr": 1071}


def fake_multi30k_tests(local: Path, langs: tuple[str, ...] = ("en", "de")) -> Path:
    """Gzip files named and sized like the Multi30k 2017/2018 test sets (no sha256 pinned,
    so only their line counts are checked), toy sentences inside: ``local/multi30k/``."""
    (local / "multi30k").mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(MULTI30K_TESTS.items()):
        pairs = toy_pairs(n, seed=10 + i)
        for lang in langs:
            side = [en if lang == "en" else de for en, de in pairs]
            write_side(local / "multi30k" / f"{split}.{lang}.gz", side, gz=True)
    return local


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory) -> Path:
    """A toy corpus: train (gzipped, 600 pairs), valid (40, one empty line), test (30)."""
    d = tmp_path_factory.mktemp("toy")
    write_pairs(d, "train", toy_pairs(600, seed=0), gz=True)
    valid = toy_pairs(40, seed=1)
    valid[5] = ("", "")
    write_pairs(d, "valid", valid)
    write_pairs(d, "test", toy_pairs(30, seed=2))
    return d


def files_config(directory: Path, root: Path, name: str = "toy", **overrides) -> dict:
    cfg = {
        "name": name, "corpus": None, "src_lang": "en", "tgt_lang": "de",
        "files": {
            "train": {"src": str(directory / "train.en.gz"), "tgt": str(directory / "train.de.gz")},
            "valid": {"src": str(directory / "valid.en"), "tgt": str(directory / "valid.de")},
            "test": {"src": str(directory / "test.en"), "tgt": str(directory / "test.de")},
        },
        "root": str(root), "local_dir": None,
        # The toy corpus draws its pairs with replacement: repeats are its distribution.
        "clean": {"drop_empty": True, "max_len": 100, "max_ratio": 3.0, "dedup": False},
    }
    cfg.update(overrides)
    return cfg


TOY_TOKENIZER = {"joint": True, "vocab_size": 64, "model_type": "unigram",
                 "character_coverage": 1.0, "input_sentence_size": 0, "seed": 1}


@pytest.fixture(scope="session")
def toy_data_cfg(toy_dir, tmp_path_factory) -> dict:
    return files_config(toy_dir, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def toy_prepared(toy_data_cfg):
    """The toy corpus prepared once: joint tokenizer (64 pieces), encoded splits."""
    from nmt.data.prepare import prepare

    return prepare(toy_data_cfg, TOY_TOKENIZER)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: its tensors are tiny, and extra threads only
    spin (and crawl on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """The offline copy of the catalog corpora (../shared/data or $NMT_DATA_DIR)."""
    path = Path(os.environ.get("NMT_DATA_DIR") or SHARED_DATA)
    if not (path / "multi30k").is_dir():
        pytest.skip(f"no offline copy of multi30k under {path}")
    return path


def pytest_collection_modifyitems(config, items) -> None:
    """The slow tests first (in their modules' order): under pytest-xdist the longest ones
    then start at once, rather than keep one worker busy after the other is done."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

"""Config composition and the command-line entry points (run as a user would)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import files_config, toy_pairs
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt.data.captioning import CaptionDataConfig
from nmt.data.catalog import CATALOG
from nmt.data.prepare import DataConfig, from_dict
from nmt.data.tokenizer import TokenizerConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config, overrides=overrides)


@pytest.mark.parametrize("data", choices("data"))
def test_every_data_config_composes(data):
    cfg = compose_cfg("prepare", [f"data={data}"])
    values = OmegaConf.to_container(cfg.data, resolve=False)
    if "format" in values:  # captioning data (docs/captioning.md)
        caption = from_dict(CaptionDataConfig, values, "data")
        assert caption.format in ("shapes", "karpathy", "csv") and caption.name == data
        return
    dc = from_dict(DataConfig, values, "data")
    if dc.corpus is not None:
        entry = CATALOG[dc.corpus]
        for split in dc.splits.values():
            entry.filename(split, dc.src_lang)
            entry.filename(split, dc.tgt_lang)
        assert data == f"{dc.corpus}_{dc.src_lang}_{dc.tgt_lang}" == dc.name
    dc.clean_config()


@pytest.mark.parametrize("tokenizer", choices("tokenizer"))
def test_every_tokenizer_config_composes(tokenizer):
    cfg = compose_cfg("prepare", [f"tokenizer={tokenizer}"])
    tc = from_dict(TokenizerConfig, OmegaConf.to_container(cfg.tokenizer), "tokenizer")
    assert tc.joint == (tokenizer == "spm_joint")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nmt.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


def files_overrides(cfg: dict) -> list[str]:
    out = ["data=files", f"data.root={cfg['root']}", "data.src_lang=en", "data.tgt_lang=de",
           "tokenizer.vocab_size=40"]
    for split, sides in cfg["files"].items():
        out += [f"data.files.{split}.{side}={path}" for side, path in sides.items()]
    return out


def test_prepare_command_on_own_files(toy_dir, tmp_path):
    cfg = files_config(toy_dir, tmp_path / "cache")
    result = run_cli("prepare", *files_overrides(cfg), "max_tokens=500", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    # The toy corpus repeats pairs, which the default duplicate filter drops (dev keeps all).
    distinct = len(set(toy_pairs(600, seed=0)))
    assert summary["train"]["pairs"] == distinct < 600 and summary["valid"]["pairs"] == 40
    assert summary["train"]["clean"]["duplicate"] == 600 - distinct
    assert summary["src_vocab"] == 40


@pytest.mark.parametrize(("override", "message"), [
    ("data.files.valid.src=/no/such/file.en", "error: /no/such/file.en: file not found"),
    ("tokenizer.model_type=wordpiece", "error: unknown tokenizer model_type 'wordpiece'"),
    ("tokenizer.vocab_size=100000", "error: tokenizer vocab_size=100000 is too large"),
])
def test_prepare_command_errors_are_one_line(toy_dir, tmp_path, override, message):
    cfg = files_config(toy_dir, tmp_path / "cache")
    result = run_cli("prepare", *files_overrides(cfg), override, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_choice_lists_valid_ones(tmp_path):
    result = run_cli("prepare", "data=multi30k_en_xx", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: data=multi30k_en_xx: no such choice; valid choices: captions_csv, coco, files, "
        "flickr30k, flickr8k, gettext_en_de, gettext_en_ja, gettext_en_ko, gettext_en_zh, "
        "multi30k_cs_en, multi30k_de_en, multi30k_en_cs, multi30k_en_de, multi30k_en_fr, "
        "multi30k_fr_en, shapes")


def test_misspelled_key_is_refused(tmp_path):
    result = run_cli("prepare", "data.srclang=en", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: data.srclang: unknown key; valid keys: clean, "
                                     "corpora, corpus, files, local_dir, name, root, splits, "
                                     "src_lang, temperature, tgt_lang, workers")


@pytest.mark.parametrize(("command", "key"), [("translate", "checkpoint"),
                                              ("evaluate", "checkpoint"), ("caption", "images")])
def test_a_missing_mandatory_value_is_one_line(command, key, tmp_path):
    result = run_cli(command, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {key} is not set; give it on the command "
                                      f"line ({key}=...)")


def test_command_logging_follows_sys_stderr(monkeypatch):
    """translate/evaluate run in-process too (Python API, tests): their log handler
    writes to the sys.stderr of each record's time, not to a stream swapped out and
    closed since (which logging reports as "I/O operation on closed file")."""
    import io
    import logging

    from nmt.cli import commands as cli

    first, second = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setattr(sys, "stderr", first)
        cli._log_to_stderr()
        logging.getLogger("nmt.test").info("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("nmt.test").info("two")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert second.getvalue().rstrip().endswith("two")
    assert "one" not in second.getvalue()

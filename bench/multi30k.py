"""The Multi30k en->de lines the benchmarks read, from where the default training
config finds them (data.root, and NMT_DATA_DIR offline)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nmt.data.catalog import fetch_split
from nmt.data.corpus import read_lines

ROOT = Path(__file__).resolve().parent.parent


def split_lines(split: str) -> tuple[list[str], list[str]]:
    """The English sources and German references of a Multi30k split."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        data = OmegaConf.to_container(compose(config_name="train").data, resolve=True)
    assert isinstance(data, dict)
    files = fetch_split("multi30k", split, "en", "de", data["root"], data["local_dir"])
    return list(read_lines(files.src)), list(read_lines(files.tgt))

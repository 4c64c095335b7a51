"""caption.py: caption image files with a checkpoint, and score captions (evaluate.py).

    python caption.py checkpoint=caption.ckpt images=photos/ output=captions.tsv

``images`` is a folder (every file in it, sorted by name; not its subfolders), one
image file, or a list of either. The output is one line per readable image,
``image<TAB>caption`` (with n_best > 1: ``image<TAB>rank<TAB>score<TAB>caption``),
written to a temporary file renamed when complete. A file that is not a readable
image is skipped with a one-line message and counted; it never stops the run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from nmt.core.errors import ConfigError, DataError
from nmt.core.metrics import caption_scores
from nmt.data.captioning import CaptionDataConfig, read_records
from nmt.data.prepare import from_dict
from nmt.decoding.options import Decoding
from nmt.inference.captioner import Caption, Captioner, ImageFailure
from nmt.inference.options import as_list, atomic_output, resolve_device

log = logging.getLogger(__name__)


def image_paths(sources: list[str]) -> Iterator[str]:
    """The files of each folder (sorted by name, hidden ones left out) and each file."""
    for source in sources:
        path = Path(source)
        if path.is_dir():
            yield from (str(p) for p in sorted(path.iterdir())
                        if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield str(path)
        else:
            raise DataError(f"{source}: no such image file or folder")


def format_caption(caption: Caption, n_best: int) -> str:
    name = caption.source.replace("\t", " ")
    texts = [h.text.replace("\n", " ").replace("\t", " ") for h in caption.hypotheses]
    if n_best == 1:
        return f"{name}\t{texts[0] if texts else ''}\n"
    return "".join(f"{name}\t{k}\t{h.score:.4f}\t{t}\n"
                   for k, (t, h) in enumerate(zip(texts, caption.hypotheses, strict=True)))


def write_captions(captioner: Captioner, paths: Iterator[str], out: IO[str],
                   decoding: Decoding, progress: bool, plots_dir: str | None = None,
                   plots_n: int = 0) -> dict[str, int]:
    """Caption ``paths`` into ``out``; attention plots of the first ``plots_n`` images."""
    counts = {"images": 0, "failed": 0}
    bar = tqdm(desc="captioning", unit=" img", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    for item in captioner.caption_files(paths, decoding,
                                        attention_first=plots_n if plots_dir else 0):
        if isinstance(item, ImageFailure):
            counts["failed"] += 1
            log.warning("skipped: %s", item.message)
            continue
        out.write(format_caption(item, decoding.n_best))
        counts["images"] += 1
        if plots_dir and counts["images"] <= plots_n and item.pixels is not None:
            from nmt.inference.plots import plot_caption_attention

            name = f"{counts['images']:04d}.{Path(item.source).stem}.png"
            plot_caption_attention(item, captioner.tokenizer, Path(plots_dir) / name)
        bar.update(1)
    bar.close()
    return counts


def run(cfg: Any) -> dict[str, int]:
    """caption.py (conf/caption.yaml)."""
    sources = as_list(cfg.images)
    if not sources:
        raise ConfigError("images is not set: give a folder or image file(s), images=DIR")
    decoding = Decoding.from_dict(dict(cfg.decoding))
    captioner = Captioner.from_checkpoint(cfg.checkpoint, resolve_device(cfg.device),
                                          cfg.batch_size)
    paths = list(image_paths(sources))  # a missing source fails before anything is written
    with atomic_output(cfg.output) as out:
        counts = write_captions(captioner, iter(paths), out, decoding, cfg.progress,
                                cfg.attention_plots, cfg.attention_plots_n)
    if counts["failed"]:
        log.warning("%d of %d file(s) were not readable images and were skipped",
                    counts["failed"], len(paths))
    log.info("captioned %d image(s) into %s", counts["images"], cfg.output)
    return counts


def evaluate_captions(cfg: Any, checkpoints: list[str], decoding: Decoding, out_dir: Path
                      ) -> list[dict[str, Any]]:
    """evaluate.py for captioning data: caption each split's images with each checkpoint
    and score against all of their reference captions (BLEU-1..4, ROUGE-L, CIDEr-D)."""
    data = from_dict(CaptionDataConfig, dict(cfg.data), "data")
    data.check()
    report = []
    for ckpt in checkpoints:
        captioner = Captioner.from_checkpoint(ckpt, resolve_device(cfg.device))
        records = read_records(data, captioner.settings.size)
        for split in as_list(cfg.split):
            if split not in records:
                raise ConfigError(f"split={split}: the data has {', '.join(records)}")
            images = records[split]
            hyp_path = out_dir / f"{Path(ckpt).stem}.{split}.tsv"
            start = time.perf_counter()
            with atomic_output(str(hyp_path)) as out:
                counts = write_captions(captioner, iter([str(i.path) for i in images]), out,
                                        decoding, cfg.progress)
            wall = time.perf_counter() - start
            if counts["failed"]:
                raise DataError(f"{counts['failed']} image(s) of {split} are not readable")
            hyps = [line.split("\t", 1)[1].rstrip("\n")
                    for line in hyp_path.read_text(encoding="utf-8").splitlines(True)]
            entry = {"checkpoint": str(ckpt), "test_set": split, "source": str(data.name),
                     "hypotheses": str(hyp_path), "sentences": len(images),
                     **caption_scores(hyps, [list(i.captions) for i in images]),
                     "decoding": dataclasses.asdict(decoding), "wall_s": round(wall, 3),
                     "sentences_per_s": round(len(images) / wall, 2)}
            report.append(entry)
            print(json.dumps({k: entry.get(k) for k in ("checkpoint", "test_set", "bleu4",
                                                        "cider", "rouge_l")}))
    return report

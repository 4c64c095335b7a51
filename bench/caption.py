"""The captioning recipe on the procedural shapes data, trained and checked in one run.

    python bench/caption.py [--checkpoint caption.ckpt] [--run-dir runs/caption-bench]
                            [override ...]

Without a checkpoint it trains ``python train.py task=caption data=shapes`` (any extra
train.py overrides after the options) and takes its best checkpoint. Then it
captions the held-out test images from their files, as caption.py does, and reports:
BLEU-1..4, ROUGE-L and CIDEr-D against all true captions of each image; the share of
colour and shape words written while the most attended cell of the feature grid lay
inside the box of the shape the word names (nmt.data.shapes.attended_words), for colour
and shape words apart, the median distance in pixels from a missing cell's centre to
the box, and the mean share of a word's attention on cells inside the box; the share
of distinct captions (one caption for every image is the classic preprocessing bug).
The last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nmt.core.metrics import caption_scores  # noqa: E402
from nmt.data.captioning import CaptionDataConfig, read_records  # noqa: E402
from nmt.data.captions import CaptionedImage  # noqa: E402
from nmt.data.prepare import from_dict  # noqa: E402
from nmt.data.shapes import AttendedWord, ShapeObject, attended_words  # noqa: E402
from nmt.decoding.options import Decoding  # noqa: E402
from nmt.inference.captioner import Caption, Captioner  # noqa: E402


def train(run_dir: Path, overrides: list[str]) -> tuple[str, float, dict]:
    from nmt.training.train import train as run_training

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "task=caption", "data=shapes", f"run_dir={run_dir}", "test_after_training=false",
            "trainer.enable_progress_bar=false", *overrides])
    start = time.perf_counter()
    run_training(cfg)
    minutes = (time.perf_counter() - start) / 60
    summary = json.loads((run_dir / "metrics.json").read_text())
    return summary["best_checkpoint"], minutes, OmegaConf.to_container(cfg.data, resolve=True)


def check(captions: list[Caption], images: list[CaptionedImage], size: int
          ) -> dict[str, float]:
    """Scores, attention in the box, and distinct captions of the test images."""
    scores = caption_scores([c.text for c in captions], [list(i.captions) for i in images])
    found: list[AttendedWord] = []
    for caption, image in zip(captions, images, strict=True):
        attention = caption.hypotheses[0].attention
        assert attention is not None and image.scene is not None
        scene = [ShapeObject.from_dict(o) for o in image.scene]
        found += attended_words(caption.text.split(), attention.numpy(), scene, caption.grid,
                                size)

    def share(words: list[AttendedWord]) -> float:
        return round(100 * sum(w.hit for w in words) / max(len(words), 1), 2)

    misses = [w.distance for w in found if not w.hit and np.isfinite(w.distance)]
    return {**scores, "attention_in_box": share(found), "attended_words": len(found),
            "attention_colour": share([w for w in found if w.kind == "colour"]),
            "attention_shape": share([w for w in found if w.kind == "shape"]),
            "attention_miss_px": round(float(np.median(misses)), 2) if misses else 0.0,
            "attention_mass_in_box": round(100 * float(np.mean([w.mass for w in found])), 2)
            if found else 0.0,
            "distinct_captions": round(100 * len({c.text for c in captions}) / len(captions), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--run-dir", default="runs/caption-bench")
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args()
    result: dict[str, object] = {}
    data = {"name": "shapes", "format": "shapes"}
    if args.checkpoint is None:
        checkpoint, minutes, data = train(Path(args.run_dir), args.overrides)
        result["train_minutes"] = round(minutes, 2)
    else:
        checkpoint = args.checkpoint
    captioner = Captioner.from_checkpoint(checkpoint)
    size = captioner.settings.size
    images = read_records(from_dict(CaptionDataConfig, data, "data"), size)["test"]
    decoding = Decoding(beam_size=args.beam_size, max_len=30)
    start = time.perf_counter()
    captions = [c for c in captioner.caption_files([str(i.path) for i in images], decoding,
                                                   attention_first=len(images))
                if isinstance(c, Caption)]
    seconds = time.perf_counter() - start
    assert len(captions) == len(images), "every test image is readable"
    result.update(check(captions, images, size))
    result.update(images=len(images), images_per_s=round(len(images) / seconds, 1),
                  beam_size=args.beam_size, checkpoint=str(checkpoint),
                  date=time.strftime("%Y-%m-%d"))
    for caption in captions[:5]:
        print(f"{Path(caption.source).name}\t{caption.text}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Translation speed benchmark on Multi30k en->de test_2016_flickr.

    python bench/translate.py [--checkpoint model.ckpt] [--unbatched 1000] [--train-steps 300]
                              [--device cpu|cuda]

Without a checkpoint, the script first trains the default recipe briefly itself
(--train-steps). It then translates the test set greedily and with beam 5 in
token-budget batches, and with beam 5 one sentence at a time (the first
--unbatched sentences), in the same run, and checks that batched and unbatched
beam search agree. The last line printed is one JSON object (keys are compared
from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from nmt.data.corpus import fetch_split, read_lines  # noqa: E402
from nmt.translator import Decoding, Translator  # noqa: E402


def train_briefly(steps: int, run_dir: Path) -> Path:
    from nmt.train import train

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false",
            "test_after_training=false", f"run_dir={run_dir}"])
    train(cfg)
    return run_dir / "checkpoints" / "last.ckpt"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--unbatched", type=int, default=1000,
                        help="sentences translated one at a time (default: all 1000)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--batch-tokens", type=int, default=4000)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        data = OmegaConf.to_container(compose(config_name="train").data, resolve=True)
    files = fetch_split("multi30k", "test_2016_flickr", "en", "de", data["root"],
                        data["local_dir"])
    sources = list(read_lines(files.src))

    with tempfile.TemporaryDirectory(prefix="nmt-bench-translate-") as tmp:
        checkpoint = args.checkpoint or train_briefly(args.train_steps, Path(tmp))
        translator = Translator.from_checkpoint(checkpoint, device=args.device)
        translator.translate(sources[:50], beam_size=5)  # warm-up

        _, greedy_s = timed(lambda: translator.translate(
            sources, beam_size=1, batch_tokens=args.batch_tokens))
        beam, beam_s = timed(lambda: translator.translate(
            sources, beam_size=5, batch_tokens=args.batch_tokens))
        subset = sources[: args.unbatched]
        single, single_s = timed(lambda: [translator.translate([s], beam_size=5)[0]
                                          for s in subset])
    result = {
        "device": args.device,
        "checkpoint": str(args.checkpoint or f"default recipe, {args.train_steps} steps"),
        "sentences": len(sources),
        "greedy_sentences_per_s": round(len(sources) / greedy_s, 1),
        "beam5_sentences_per_s": round(len(sources) / beam_s, 1),
        "beam5_unbatched_sentences_per_s": round(len(subset) / single_s, 1),
        "unbatched_sentences": len(subset),
        "batched_over_unbatched": round((len(sources) / beam_s) / (len(subset) / single_s), 2),
        "identical_outputs": beam[: len(subset)] == single,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "decoding": {k: v for k, v in vars(Decoding(beam_size=5)).items()
                     if k in ("alpha", "max_len_a", "max_len_b")},
        "batch_tokens": args.batch_tokens,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""ONNX and int8 exports against the PyTorch model, on Multi30k en->de test_2016_flickr.

    python bench/export.py --checkpoint runs/demo/checkpoints/best-*.ckpt [--rounds 2]
                           [--workers N] [--batch-tokens N] [--torch-int8]

Exports the checkpoint (format=onnx and format=int8) into a temporary directory and
translates the test set (1000 lines) with PyTorch (float32), the ONNX export and the int8
export, greedily and with beam 5, all in this one run, through the same Translator and
search as translate.py (its default workers and batch budget). Speeds are ratios within
the run: each round translates every line with every variant in turn (the order reversed
every other round, so that no variant always runs first), and a variant's speed is all
its sentences over all its time. ``--torch-int8`` adds torch's own dynamic quantization
(``torch.ao.quantization.quantize_dynamic`` of the nn.Linear layers: output layer,
attention, bridge) as a fourth variant, to compare it with onnxruntime's.

The last line printed is one JSON object: ``onnx_greedy_identical`` and
``onnx_beam_identical`` (fraction of lines equal to PyTorch's), speed ratios against
PyTorch at beam 5 (``onnx_speed_ratio``, ``int8_speed_ratio``) and greedy, BLEU of each
at beam 5 (sacrebleu, as evaluate.py), ``int8_bleu_delta`` (int8 - fp32), date, machine.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from multi30k import split_lines  # noqa: E402

from nmt.core.metrics import Scoring, corpus_scores  # noqa: E402
from nmt.decoding.options import Decoding  # noqa: E402
from nmt.export.exporter import export_checkpoint  # noqa: E402
from nmt.inference.options import resolve_workers, share_threads  # noqa: E402
from nmt.inference.translator import DEFAULT_BATCH_TOKENS, Translator  # noqa: E402

DECODINGS = {"greedy": Decoding(beam_size=1), "beam5": Decoding(beam_size=5)}


def machine() -> str:
    name = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    return (f"{os.cpu_count()}-core {name}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def torch_int8(checkpoint: str, workers: int) -> Translator:
    """The checkpoint with torch's dynamic int8 nn.Linear layers (the decoder's cells run
    their float weights through cell kernels, which quantize_dynamic does not reach)."""
    from torch.ao.quantization import quantize_dynamic

    translator = Translator.from_checkpoint(checkpoint, workers=workers)
    with warnings.catch_warnings():  # torch 2.13: quantized tensors are deprecated
        warnings.simplefilter("ignore")
        model = quantize_dynamic(copy.deepcopy(translator.model), {torch.nn.Linear},
                                 dtype=torch.qint8)
    return Translator(model, translator.src_tokenizer, translator.tgt_tokenizer,
                      workers=workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a translation checkpoint (.ckpt)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the test set")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_BATCH_TOKENS)
    parser.add_argument("--workers", type=int, help="batches at once (default: translate.py's)")
    parser.add_argument("--torch-int8", action="store_true",
                        help="also torch's dynamic quantization of the linear layers")
    args = parser.parse_args()

    sources, refs = split_lines("test_2016_flickr")
    result: dict = {"machine": machine()}
    workers = resolve_workers(args.workers, "cpu")
    share_threads(workers)  # as translate.py: before the models, whose sessions take it
    with tempfile.TemporaryDirectory(prefix="nmt-bench-export-") as tmp:
        translators = {"torch": Translator.from_checkpoint(args.checkpoint, workers=workers)}
        for fmt in ("onnx", "int8"):
            start = time.perf_counter()
            manifest = export_checkpoint(args.checkpoint, fmt, Path(tmp) / fmt)
            result[f"{fmt}_export_s"] = round(time.perf_counter() - start, 1)
            result[f"{fmt}_megabytes"] = round(
                sum(f["bytes"] for f in manifest["files"].values()) / 2**20, 1)
            translators[fmt] = Translator.from_checkpoint(Path(tmp) / fmt, workers=workers)
        if args.torch_int8:
            translators["torch_int8"] = torch_int8(args.checkpoint, workers)
        names = list(translators)
        for translator in translators.values():  # warm-up
            translator.translate_text(sources[:50], DECODINGS["beam5"])
        outputs: dict[tuple[str, str], list[str]] = {}
        seconds = {(n, d): 0.0 for n in names for d in DECODINGS}
        for dname, decoding in DECODINGS.items():
            for r in range(args.rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    start = time.perf_counter()
                    out = translators[name].translate_text(sources, decoding,
                                                           batch_tokens=args.batch_tokens)
                    seconds[name, dname] += time.perf_counter() - start
                    outputs[name, dname] = out
    speed = {key: round(len(sources) * args.rounds / s, 1) for key, s in seconds.items()}
    bleu = {name: corpus_scores(outputs[name, "beam5"], refs, ("bleu",), Scoring("de"))["bleu"]
            for name in names}

    def identical(name: str, dname: str) -> float:
        pairs = zip(outputs[name, dname], outputs["torch", dname], strict=True)
        return round(sum(a == b for a, b in pairs) / len(sources), 4)

    result.update({
        "onnx_greedy_identical": identical("onnx", "greedy"),
        "onnx_beam_identical": identical("onnx", "beam5"),
        "onnx_speed_ratio": round(speed["onnx", "beam5"] / speed["torch", "beam5"], 2),
        "onnx_greedy_speed_ratio": round(speed["onnx", "greedy"] / speed["torch", "greedy"], 2),
        "fp32_bleu": bleu["torch"], "onnx_bleu": bleu["onnx"], "int8_bleu": bleu["int8"],
        "int8_bleu_delta": round(bleu["int8"] - bleu["torch"], 2),
        "int8_speed_ratio": round(speed["int8", "beam5"] / speed["torch", "beam5"], 2),
        "int8_greedy_speed_ratio": round(speed["int8", "greedy"] / speed["torch", "greedy"], 2),
        "int8_beam_identical": identical("int8", "beam5"),
    })
    if args.torch_int8:
        result.update({
            "torch_int8_bleu": bleu["torch_int8"],
            "torch_int8_speed_ratio": round(speed["torch_int8", "beam5"]
                                            / speed["torch", "beam5"], 2)})
    result.update({
        "sentences_per_s": {f"{n}_{d}": v for (n, d), v in speed.items()},
        "sentences": len(sources), "rounds": args.rounds, "workers": workers,
        "batch_tokens": args.batch_tokens, "checkpoint": Path(args.checkpoint).name,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
    })
    print(json.dumps(result))


if __name__ == "__main__":
    main()

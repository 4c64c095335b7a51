"""Training speed of the default model beside Joey NMT's, on the same data, in one run.

    python bench/joey.py --joey-python /path/to/joey-env/bin/python [--steps 20]
                         [--warmup 5] [--rounds 2]

Joey NMT (2.3) is not one of our dependencies (its pins, e.g. protobuf < 3.21, clash
with ours): install it in an environment of its own (``python -m venv joey-env &&
joey-env/bin/pip install joeynmt torch==<ours>``) and name its Python here.

Both train the default recipe's model on Multi30k en->de with the same joint 8k
SentencePiece model (ours, from the data cache, so both read the same pieces):
bi-LSTM 256 encoder, LSTM 512 decoder, Bahdanau attention, input feeding, embeddings
256, dropout 0.3, label smoothing 0.1, Adam, batches of about 4,096 padded source +
target tokens (Joey counts max(source, target) per sentence: 2,048). Joey cannot tie
the decoder's embeddings to a 512-wide output (its tied softmax needs embedding size =
hidden size), so ours runs untied too (``model.tie_embeddings=false``): both output
layers are 512 x 8000. What still differs: Joey's Bahdanau decoder queries the
attention with the previous state (ours, Luong's flow, with the current one), and
its parameters are initialised otherwise; ``*_parameters`` show the sizes.

Joey reports target tokens per second (real target tokens with EOS, padding not) over
each ``logging_freq`` window: it trains 2 x ``--steps`` updates and logs every
``--steps``; the second window is taken (the first holds its warm-up). Ours is bench/train.py's
``target_tokens_per_s`` on the same counts. The two alternate ``--rounds`` times (a
machine whose load drifts weighs on both alike); medians are compared. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from nmt.data.corpus import read_lines  # noqa: E402
from nmt.data.prepare import prepare  # noqa: E402

JOEY_LOG = re.compile(r"Step:\s+(\d+),.*Tokens per Sec:\s+([\d.]+)")
JOEY_PARAMS = re.compile(r"Total params:\s+(\d+)")


def joey_config(cfg: DictConfig, data_dir: Path, model_dir: Path, steps: int) -> dict:
    """Joey's configuration for our composed training config ``cfg``'s model and recipe."""
    m = cfg.model
    side = {"level": "bpe", "lowercase": False, "max_length": 100,
            "voc_file": str(data_dir / "vocab.txt"), "tokenizer_type": "sentencepiece",
            "tokenizer_cfg": {"model_file": str(data_dir / "joint.model")}}
    embeddings = {"embedding_dim": m.emb_size}
    return {
        "name": "bench-joey",
        "data": {"train": str(data_dir / "train"), "dev": str(data_dir / "dev"),
                 "dataset_type": "plain", "src": {"lang": "en", **side},
                 "trg": {"lang": "de", **side}},
        "training": {
            "model_dir": str(model_dir), "overwrite": True, "use_cuda": False,
            "random_seed": cfg.seed, "optimizer": "adam", "learning_rate": cfg.optim.lr,
            # A constant rate, as bench/train.py's (Joey 2.3's plateau scheduler passes
            # `verbose`, which torch 2.13 no longer takes; this one steps at epoch ends only).
            "scheduling": "decaying", "decaying_step_size": 1000,
            "label_smoothing": cfg.loss.label_smoothing, "batch_type": "token",
            "batch_size": cfg.batching.max_tokens // 2,  # max(source, target) per sentence
            # Two windows of `steps` updates: the first holds the warm-up, the second is
            # measured (Joey restarts its tokens/s count at every log line).
            "shuffle": True, "epochs": 100, "updates": 2 * steps, "logging_freq": steps,
            "validation_freq": 10 ** 9, "eval_metrics": ["bleu"],
            "keep_best_ckpts": 1, "num_workers": 0, "fp16": False},
        "testing": {"beam_size": 1, "eval_metrics": ["bleu"]},  # not run (--skip-test)
        "model": {
            "initializer": "xavier_uniform", "bias_initializer": "zeros",
            "tied_embeddings": False, "tied_softmax": False,
            "encoder": {"type": "recurrent", "rnn_type": m.cell, "embeddings": embeddings,
                        "hidden_size": m.encoder_hidden, "bidirectional": m.bidirectional,
                        "num_layers": m.encoder_layers,
                        "dropout": m.dropout},  # the embeddings' dropout defaults to it
            "decoder": {"type": "recurrent", "rnn_type": m.cell, "embeddings": embeddings,
                        "hidden_size": m.decoder_hidden, "attention": m.attention,
                        "num_layers": m.decoder_layers, "input_feeding": m.input_feeding,
                        "init_hidden": "bridge", "dropout": m.dropout,
                        "hidden_dropout": m.dropout}},
    }


def default_config() -> DictConfig:
    """Our default training config, composed (the recipe both sides train)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train")


def write_data(cfg: DictConfig, data_dir: Path) -> None:
    """Multi30k en->de train and dev as plain text, and our joint SentencePiece model
    with its pieces as Joey's vocabulary file (Joey adds its own special symbols)."""
    prepared = prepare(OmegaConf.to_container(cfg.data, resolve=True),
                       OmegaConf.to_container(cfg.tokenizer, resolve=True))
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "train"), ("valid", "dev")):
        files = prepared.files[split]
        for lang, path in (("en", files.src), ("de", files.tgt)):
            (data_dir / f"{name}.{lang}").write_text(
                "".join(line + "\n" for line in read_lines(path)))
    tok = prepared.src_tokenizer
    tok.save(data_dir / "joint.model")
    sp = tok.sp
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i))]
    (data_dir / "vocab.txt").write_text("".join(p + "\n" for p in pieces))


def run_joey(python: str, config: dict, work: Path) -> tuple[float, int]:
    """Joey's target tokens/s over its second logging window, and its parameters."""
    path = work / "joey.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    done = subprocess.run([python, "-m", "joeynmt", "train", str(path), "--skip-test"], cwd=work,
                          capture_output=True, text=True)
    log = done.stdout + done.stderr
    tokens = window_tokens_per_s(log, 2 * config["training"]["logging_freq"])
    if tokens is None:
        tail = "\n".join(log.splitlines()[-15:])
        sys.exit(f"Joey NMT logged no second window (exit {done.returncode}):\n{tail}")
    params = JOEY_PARAMS.search(log)
    return tokens, int(params.group(1)) if params else 0


def window_tokens_per_s(log: str, step: int) -> float | None:
    """The tokens/s of Joey's log line at update ``step``, if it logged one."""
    found = [float(t) for s, t in JOEY_LOG.findall(log) if int(s) == step]
    return found[-1] if found else None


def run_ours(steps: int, warmup: int) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "train.py"),
                           f"--steps={steps}", f"--warmup={warmup}",
                           "model.tie_embeddings=false"],  # as Joey's 512 x 8000 output
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"bench/train.py failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joey-python", required=True,
                        help="the Python of an environment with joeynmt installed")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5, help="our warm-up steps")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    version = subprocess.run([args.joey_python, "-c", "import joeynmt; print(joeynmt.__version__)"],
                             capture_output=True, text=True)
    if version.returncode != 0:
        why = (version.stderr.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"{args.joey_python}: cannot import joeynmt ({why})")
    joey, ours, joey_params, our_params = [], [], 0, 0
    with tempfile.TemporaryDirectory(prefix="nmt-bench-joey-") as tmp:
        work = Path(tmp)
        cfg = default_config()
        write_data(cfg, work / "data")
        for _ in range(args.rounds):
            tokens, joey_params = run_joey(
                args.joey_python, joey_config(cfg, work / "data", work / "model", args.steps),
                work)
            joey.append(tokens)
            result = run_ours(args.steps, args.warmup)
            ours.append(result["target_tokens_per_s"])
            our_params = result["parameters"]
    print(json.dumps({
        "joey_target_tokens_per_s": round(statistics.median(joey)),
        "ours_target_tokens_per_s": round(statistics.median(ours)),
        "ours_over_joey": round(statistics.median(ours) / statistics.median(joey), 3),
        "joey_rounds": [round(t) for t in joey], "ours_rounds": [round(t) for t in ours],
        "joey_parameters": joey_params, "ours_parameters": our_params,
        "joey_version": version.stdout.strip(), "steps": args.steps, "warmup": args.warmup,
    }))


if __name__ == "__main__":
    main()

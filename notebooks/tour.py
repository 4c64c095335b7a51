# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour: train, translate, look inside, caption
#
# This notebook trains a small English-to-German model on Multi30k for a fixed number of
# steps (a couple of minutes on a laptop CPU), translates a sentence you type, shows where
# the model looked, compares greedy and beam search, sets a tanh RNN, a GRU and an LSTM
# side by side (training curves and the gradient that reaches each source word), and
# captions a picture. Every step is what the command-line tools do, called from Python.
#
# It runs from the repository's root or from `notebooks/`, with the corpora where
# `NMT_DATA_DIR` points (or `../shared/data` beside the repository). Its runs go to
# `runs/tour` (or `$TOUR_DIR`). The models are tiny and briefly trained: the numbers show
# the method, not what the toolkit reaches (see docs/results.md for that).

# %%
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from IPython.display import Image, display

ROOT = Path.cwd() if (Path.cwd() / "train.py").is_file() else Path.cwd().parent
os.chdir(ROOT)
sys.path.insert(0, str(ROOT))
if "NMT_DATA_DIR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["NMT_DATA_DIR"] = str(ROOT.parent / "shared" / "data")
WORK = Path(os.environ.get("TOUR_DIR", ROOT / "runs" / "tour"))
DATA = f"data.root={WORK / 'data'}"  # the tour's own tokenizers and caches


def train(run_dir, *overrides, threads=None):
    """python train.py run_dir=... overrides... (a fresh run); returns its metrics.json."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}))
    done = subprocess.run([sys.executable, "train.py", f"run_dir={run_dir}", DATA,
                           "trainer.enable_progress_bar=false", "test_after_training=false",
                           "callbacks.early_stopping_patience=null", *overrides],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads((Path(run_dir) / "metrics.json").read_text())


# %% [markdown]
# ## 1. Train a small model
#
# A bidirectional LSTM encoder and an LSTM decoder with Bahdanau attention (the default
# model, made small), 240 steps of about 4,000 tokens each, validated once at the end on
# a quarter of the dev set. `callbacks.gradient_flow` also records each layer's gradient
# norm every 10 steps (section 5). The same run on the command line:
#
#     python train.py model.emb_size=128 model.encoder_hidden=128 model.decoder_hidden=256 \
#         trainer.max_steps=240 ...

# %%
STEPS = 240
SMALL = ["model.emb_size=128", "model.encoder_hidden=128", "model.decoder_hidden=256",
         "model.input_feeding=false", "model.tie_src_tgt=true", "model.dropout=0.1",
         "optim.lr=0.004", "optim.scheduler=null", "trainer.max_epochs=10",
         "trainer.check_val_every_n_epoch=null"]
metrics = train(WORK / "model", *SMALL, f"trainer.max_steps={STEPS}",
                f"trainer.val_check_interval={STEPS}", "+trainer.limit_val_batches=0.25",
                "callbacks.gradient_flow.every_n_steps=10")
CHECKPOINT = metrics["best_checkpoint"]
print(f"dev BLEU (greedy, a quarter of the dev set) after {STEPS} steps: "
      f"{metrics['val/bleu']:.2f}, in {metrics['val/train_minutes']:.1f} minutes")

# %% [markdown]
# Every run draws its curves (`curves.png`): training loss, dev loss and perplexity, dev
# BLEU and the learning rate, against steps and against minutes.

# %%
display(Image(str(WORK / "model" / "curves.png")))

# %% [markdown]
# ## 2. Translate your own sentence
#
# `Translator` holds the model and its SentencePiece tokenizers; `translate.py` uses it,
# and so does `python translate.py checkpoint=...` typed at a terminal, one line at a time.

# %%
from nmt.decoding.options import Decoding
from nmt.inference.translator import Translator

translator = Translator.from_checkpoint(CHECKPOINT)
sentence = "A man in a blue shirt is riding a bike."
print(translator.translate_text([sentence]))
print(translator.src_tokenizer.encode_pieces(sentence))  # what the model reads

# %% [markdown]
# ## 3. Where did it look?
#
# The attention weights of each target piece (rows) over the source pieces (columns);
# `translate.py attention_plots=DIR` writes the same plot for each sentence.

# %%
from nmt.inference.plots import plot_attention

found = translator.translate([sentence], Decoding(beam_size=1), attention=True)[0]
display(Image(str(plot_attention(found, translator.tgt_tokenizer, WORK / "attention.png"))))

# %% [markdown]
# ## 4. Greedy search and beam search
#
# Greedy search takes the most likely piece at each step; beam search keeps the 5 best
# partial translations. Scored with sacreBLEU on the first 200 dev sentences. On a model
# this young the beam may gain nothing; on the 30-minute de->en model of docs/results.md
# (Against the tutorials) it adds 1.2 BLEU.

# %%
import itertools

from nmt.core.metrics import Scoring
from nmt.data.catalog import fetch_split
from nmt.data.corpus import read_lines

dev = fetch_split("multi30k", "val", "en", "de", WORK / "data", os.environ.get("NMT_DATA_DIR"))
sources = list(itertools.islice(read_lines(dev.src), 200))
references = list(itertools.islice(read_lines(dev.tgt), 200))
scoring = Scoring("de")
for beam in (1, 5):
    hypotheses = translator.translate_text(sources, Decoding(beam_size=beam))
    bleu = scoring.scores(hypotheses, references, ("bleu",))["bleu"]
    print(f"beam {beam}: BLEU {bleu:.2f}   e.g. {hypotheses[0]}")
print(f"reference:            {references[0]}")

# %% [markdown]
# ## 5. RNN, GRU, LSTM: curves and the gradient that reaches each word
#
# Three small models that differ only in their cell, with a one-directional encoder and
# **no attention**: the decoder sees the source only through the encoder's last state, so
# the loss's gradient must travel back through every step of the recurrence to reach the
# first words. A tanh RNN multiplies it by a Jacobian at every step and it fades (the
# vanishing gradient); the gates of a GRU or LSTM let it pass more nearly unchanged.
# `python -m nmt.cli curves` overlays the runs' curves, `python -m nmt.cli gradients` the
# gradient norm at each encoder state (averaged over 64 dev sentences), for the trained
# models and for the same models with fresh weights.

# %%
from concurrent.futures import ThreadPoolExecutor

from nmt.training.curves import plot_runs

CELL_STEPS = 40
runs = {cell: WORK / cell for cell in ("rnn", "gru", "lstm")}


def train_cell(cell):  # one thread each, the three at once
    return train(runs[cell], *SMALL, f"model.cell={cell}", "model.attention=none",
                 "model.bidirectional=false", f"trainer.max_steps={CELL_STEPS}",
                 "+trainer.limit_val_batches=0", "callbacks.gradient_flow.every_n_steps=5",
                 threads=1)


with ThreadPoolExecutor(3) as pool:
    list(pool.map(train_cell, runs))

display(Image(str(plot_runs(list(runs.values()), WORK / "cells.png"))))


# %%
def gradients(output, *more):
    checkpoints = ",".join(str(run / "checkpoints" / "last.ckpt") for run in runs.values())
    subprocess.run([sys.executable, "-m", "nmt.cli", "gradients", f"checkpoint=[{checkpoints}]",
                    DATA, f"output={output}", *more], check=True, capture_output=True)
    report = json.loads(Path(output).with_suffix(".json").read_text())
    for model in report["models"]:
        print(f"{model['label']:40s} first/last gradient norm: {model['first_last_ratio']:.3g}")
    display(Image(str(output)))


print(f"trained for {CELL_STEPS} steps:")
gradients(WORK / "gradients.png")
print("fresh weights:")
gradients(WORK / "gradients-untrained.png", "untrained=true")

# %% [markdown]
# The ratio is the mean gradient norm at the first source position over that at the last
# (EOS). With attention every encoder state is read directly; docs/training.md (Gradient
# flow) has the same comparison after longer training, with attention and without.
# The model of section 1 (bidirectional, with attention) also logged each layer's
# gradient norm while it trained, and its profile at the validation:

# %%
from nmt.training.curves import read_curves
from nmt.training.gradients import layer_curves

for name, (steps, values) in layer_curves(read_curves(WORK / "model")).items():
    print(f"{name:28s} step {int(steps[0]):3d}: {values[0]:8.4f}"
          f"   step {int(steps[-1]):3d}: {values[-1]:8.4f}")
display(Image(str(WORK / "model" / "gradients.png")))

# %% [markdown]
# ## 6. Caption an image
#
# The same decoder, attention and search caption images: a small CNN turns each image
# into a grid of feature vectors, the encoder states the decoder attends over ("show,
# attend and tell"). The shapes set is drawn on the fly (`data=shapes`): one to three
# coloured shapes per image, with captions such as "a small red circle above a large
# blue square". A short run, then one test image and the cell it looked at for each word.

# %%
from nmt.inference.captioner import Captioner
from nmt.inference.plots import plot_caption_attention

caption_metrics = train(WORK / "caption", "task=caption", "data=shapes",
                        "trainer.max_steps=120", "trainer.max_epochs=5",
                        "+trainer.limit_val_batches=0", "optim.scheduler=null")
captioner = Captioner.from_checkpoint(WORK / "caption" / "checkpoints" / "last.ckpt")
image = sorted((WORK / "data" / "shapes" / "generated" / "images").glob("test_*.png"))[0]
caption = next(iter(captioner.caption_files([str(image)], attention_first=1)))
print(caption.text)
display(Image(str(plot_caption_attention(caption, captioner.tokenizer,
                                         WORK / "caption-attention.png"))))

# %% [markdown]
# ## Where next
#
# - `python translate.py checkpoint=runs/tour/model/checkpoints/last.ckpt` at a terminal:
#   type sentences, Ctrl-D to stop.
# - `make demo`: the 12-minute recipe that reaches about 38 BLEU on Multi30k's 2016 test set.
# - docs/model.md (the cells and attention), docs/training.md (curves, gradient flow),
#   docs/captioning.md.

"""The captioning checks on held-out shapes images, with the default recipe trained for
two epochs (534 steps, seed 1: the same run on a fast or a loaded machine; slow: about
4 minutes on one core): BLEU-4 >= 80, the attention on the shape each colour and shape
word names (computed from the scene descriptions), different captions for different
images, and the same captions from image files (caption.py's path) as from the training
data's pixel cache. The recipe's JSON goes to stderr (pytest -rP shows it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import ROOT

from nmt.data.captioning import ImageSettings
from nmt.data.datamodule import CaptionDataModule
from nmt.decoding.dispatch import decode
from nmt.decoding.options import Decoding
from nmt.inference.captioner import Caption, Captioner

EPOCHS = 2  # 534 steps: BLEU-4 92.55, attention in the box 91.07% (docs/results.md)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> tuple[dict, Path]:
    """bench/caption.py's JSON and the data root, after training the default recipe."""
    tmp = tmp_path_factory.mktemp("recipe")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "caption.py"), "--run-dir", str(tmp / "run"),
         f"data.root={tmp / 'data'}", f"trainer.max_epochs={EPOCHS}", "trainer.max_time=null",
         "logger=csv"], cwd=tmp, capture_output=True, text=True, timeout=60 * 60)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr)
    return result, tmp / "data"


@pytest.mark.slow
def test_held_out_bleu4_and_attention_in_the_named_shape(recipe):
    result, _ = recipe
    assert result["images"] == 500
    assert Path(result["checkpoint"]).name == "best-epoch01-step534.ckpt"  # both epochs ran
    assert result["bleu4"] >= 80, result
    # The issue asks 80%; the recipe measured 91-92% (docs/captioning.md).
    assert result["attended_words"] > 1000 and result["attention_in_box"] >= 80, result


@pytest.mark.slow
def test_different_images_get_different_captions(recipe):
    result, _ = recipe
    assert result["distinct_captions"] >= 50, result  # one caption for all would be 0.2


@pytest.mark.slow
def test_captions_from_files_equal_those_from_the_training_pixels(recipe):
    """A preprocessing mismatch between training and inference would show here."""
    result, root = recipe
    captioner = Captioner.from_checkpoint(result["checkpoint"])
    dm = CaptionDataModule({"name": "shapes", "format": "shapes", "root": str(root)},
                           {"joint": False, "model_type": "word", "vocab_size": 10000},
                           captioner.settings, cells=64, eval_max_tokens=600)
    assert captioner.settings == ImageSettings(64, (0.485, 0.456, 0.406),
                                               (0.229, 0.224, 0.225))
    batch = next(iter(dm.test_dataloader()))
    decoding = Decoding(beam_size=1, max_len=30)
    with torch.inference_mode():
        from_pixels = decode(captioner.model, batch, decoding)
    records = dm.captions.records["test"]
    paths = [str(records[i].path) for i in batch.indices.tolist()]
    from_files = list(captioner.caption_files(paths, decoding))
    assert all(isinstance(c, Caption) for c in from_files)
    assert [list(h[0].tokens) for h in from_pixels] == [
        list(c.hypotheses[0].tokens) for c in from_files if isinstance(c, Caption)]
    scores = np.array([h[0].score for h in from_pixels])
    assert np.allclose(scores, [c.hypotheses[0].score for c in from_files
                                if isinstance(c, Caption)], atol=1e-4)

"""Captioning end to end on a tiny shapes set: configs, data module, feature cache, the
shared training module, Captioner, caption.py and evaluate.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import ROOT, compose_train

from nmt.cli.config import check_overrides
from nmt.core.errors import CheckpointError, ConfigError
from nmt.data.captioning import ImageSettings
from nmt.data.datamodule import CaptionDataModule
from nmt.decoding.options import Decoding
from nmt.inference.captioner import Caption, Captioner, ImageFailure
from nmt.training.train import build

TINY = ["data.shapes.train=96", "data.shapes.valid=12", "data.shapes.test=12"]
SMALL_MODEL = ["model.channels=[8,16,16,16,16]", "model.emb_size=16",
               "model.decoder_hidden=32", "model.dropout=0.0"]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "logger=csv", "callbacks.early_stopping_patience=null"]


def caption_overrides(tmp: Path, *extra: str) -> list[str]:
    model = [] if "model=lstm" in extra else SMALL_MODEL  # a text model has other keys
    return ["task=caption", f"data.root={tmp / 'data'}", f"run_dir={tmp / 'run'}", *TINY,
            *extra, *model, *QUIET]


# --- configs ---------------------------------------------------------------------------------


def test_task_caption_composes_the_captioning_recipe():
    cfg = check_overrides("train", ["task=caption"])
    assert (cfg.task, cfg.model.encoder, cfg.data.format) == ("caption", "image", "shapes")
    assert cfg.callbacks.monitor == "val/cider" and cfg.validation.max_len == 30
    assert cfg.tokenizer.model_type == "word" and not cfg.tokenizer.joint
    cfg = check_overrides("train", ["task=caption", "data=flickr8k",
                                    "model=show_attend_tell_resnet"])
    assert (cfg.data.format, cfg.model.backbone, cfg.model.freeze) == ("karpathy", "resnet18",
                                                                        True)
    assert check_overrides("train", []).task == "translate"


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.backbone=vgg"], "model: unknown backbone 'vgg'; valid choices: small, resnet18"),
    (["model=lstm"], "task=caption needs an image encoder"),
    (["data=flickr8k"], "data.karpathy_json is not set"),
    (["data=captions_csv"], "data.image_dir is not set"),
])
def test_caption_mistakes_are_one_line(tmp_path, overrides, message):
    cfg = compose_train(caption_overrides(tmp_path, *overrides))
    with pytest.raises(ConfigError) as e:
        build(cfg, tmp_path / "run")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_schema_of_the_image_model_refuses_unknown_keys():
    with pytest.raises(ConfigError, match=r"model\.encoder_hidden: unknown key; valid keys:"):
        check_overrides("train", ["task=caption", "model.encoder_hidden=8"])
    with pytest.raises(ConfigError, match=r"model\.backbone: unknown key"):
        check_overrides("train", ["model.backbone=small"])  # a text model has no CNN


# --- data -------------------------------------------------------------------------------------


SETTINGS = ImageSettings(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def tiny_dm(tmp_path_factory) -> CaptionDataModule:
    root = tmp_path_factory.mktemp("shapes")
    dm = CaptionDataModule({"name": "shapes", "format": "shapes", "root": str(root),
                            "shapes": {"train": 40, "valid": 6, "test": 6}},
                           {"joint": False, "model_type": "word", "vocab_size": 100},
                           SETTINGS, cells=64, max_tokens=200)
    dm.setup()
    return dm


def test_training_batches_hold_normalised_images_and_all_their_captions(tiny_dm):
    train = tiny_dm.dataset("train")
    images = tiny_dm.captions.records["train"]
    assert len(train) == len(images)  # one example per image, with all of its captions
    batch = next(iter(tiny_dm.train_dataloader()))
    assert batch.src.shape[1:] == (3, 64, 64) and batch.src.dtype == torch.float32
    assert batch.src.min() < -1.5 and batch.src.max() > 1.5  # normalised, not 0..255 or 0..1
    assert (batch.src_lengths == 64).all() and len(batch.src_lengths) == len(batch.indices)
    assert batch.tgt_in.shape == batch.tgt_out.shape and (batch.tgt_in[:, 0] == 2).all()
    own = [images[int(train.rows[i])] for i in batch.indices.tolist()]
    decoded = tiny_dm.tokenizer.decode(batch.tgt_out.tolist())
    assert batch.src_index is not None
    assert len(decoded) == len(batch.src_index) == sum(len(i.captions) for i in own)
    for text, row in zip(decoded, batch.src_index.tolist(), strict=True):
        assert text in own[row].captions
    assert {t for t in decoded} == {c for i in own for c in i.captions}


def test_evaluation_examples_are_images_with_all_their_references(tiny_dm):
    valid = tiny_dm.dataset("valid")
    refs = tiny_dm.references("valid")
    assert len(valid) == len(refs) == 6 and all(len(r) >= 2 for r in refs)
    assert list(valid.rows) == list(range(6))


def test_a_frozen_encoder_trains_on_features_cached_once(tmp_path):
    cfg = compose_train(caption_overrides(tmp_path, "model.freeze=true"))
    dm, module, _ = build(cfg, tmp_path / "run")
    cache = sorted((tmp_path / "data" / "shapes" / "features").glob("*.npy"))
    assert len(cache) == 3  # train, valid, test
    stamps = [p.stat().st_mtime_ns for p in cache]
    batch = next(iter(dm.val_dataloader()))
    assert batch.src.dim() == 3 and batch.src.shape[1:] == (64, 16)  # (B, cells, C)
    # The cached features give the same model output as the images they came from.
    from nmt.data.captioning import cache_pixels
    from nmt.data.images import normalize

    pixels = cache_pixels(dm.captions.records["valid"], dm.caption_cfg.directory, 64)
    images = normalize(torch.from_numpy(np.asarray(pixels)[batch.indices.numpy()]),
                       SETTINGS.mean, SETTINGS.std)
    model = module.model.eval()
    with torch.no_grad():
        from_images = model(images, batch.src_lengths, batch.tgt_in)
        from_features = model(batch.src, batch.src_lengths, batch.tgt_in)
    assert torch.allclose(from_images, from_features, atol=2e-2)
    build(cfg, tmp_path / "run2")  # again: the cache is reused
    assert [p.stat().st_mtime_ns for p in cache] == stamps


# --- a briefly trained model: Captioner, caption.py, evaluate.py -------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, data root): a tiny captioner trained for six epochs on 96 images,
    enough to name shapes (an empty caption scores the same against any references)."""
    from nmt.training.train import train

    tmp = tmp_path_factory.mktemp("caption")
    train(compose_train(caption_overrides(tmp, "trainer.max_epochs=6", "optim.lr=0.01",
                                          "test_after_training=false")))
    return tmp / "run" / "checkpoints" / "last.ckpt", tmp / "data"


def test_checkpoint_carries_the_caption_model_and_its_tokenizer(trained):
    captioner = Captioner.from_checkpoint(trained[0])
    assert captioner.grid == (8, 8) and captioner.settings == SETTINGS
    metrics = json.loads((trained[0].parents[1] / "metrics.json").read_text())
    assert {"val/cider", "val/bleu4", "val/rouge_l"} <= set(metrics)


def test_captioner_skips_unreadable_files_in_place(trained, tmp_path):
    captioner = Captioner.from_checkpoint(trained[0], batch_size=2)
    images = sorted((trained[1] / "shapes" / "generated" / "images").glob("test_*.png"))[:3]
    (tmp_path / "notes.txt").write_text("not an image")
    paths = [str(images[0]), str(tmp_path / "notes.txt"), str(images[1]), str(images[2])]
    out = list(captioner.caption_files(paths, Decoding(beam_size=2, max_len=12)))
    assert [type(o) for o in out] == [Caption, ImageFailure, Caption, Caption]
    assert [o.source for o in out] == paths
    assert "notes.txt: not a readable image" in out[1].message
    assert all(len(o.hypotheses[0].tokens) <= 12 for o in out if isinstance(o, Caption))


def test_a_translation_checkpoint_is_refused(trained):
    from nmt.inference.translator import Translator

    with pytest.raises(CheckpointError, match=r"an image captioning model.*use caption\.py"):
        Translator.from_checkpoint(trained[0])


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


def test_caption_cli_writes_a_tsv_skips_bad_files_and_plots_attention(trained, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for png in sorted((trained[1] / "shapes" / "generated" / "images").glob("test_*.png"))[:4]:
        (folder / png.name).write_bytes(png.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = run_cli("caption.py", f"checkpoint={trained[0]}", f"images={folder}",
                   "output=out/captions.tsv", f"attention_plots={tmp_path / 'plots'}",
                   "attention_plots_n=2", "progress=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # The captions the Captioner gives in-process with caption.yaml's decoding.
    images = [str(p) for p in sorted(folder.glob("test_*.png"))]
    expected = Captioner.from_checkpoint(trained[0]).caption_files(
        images, Decoding(beam_size=3, max_len=30))
    assert (tmp_path / "out" / "captions.tsv").read_text() == "".join(
        f"{c.source}\t{c.text}\n" for c in expected)
    assert "broken.png: not a readable image" in done.stderr and "1 of 5 file(s)" in done.stderr
    plots = sorted((tmp_path / "plots").glob("*.png"))
    assert len(plots) == 2  # a tiny model's caption may be empty: one panel (EOS) at least
    for plot in plots:
        with Image.open(plot) as image:
            assert image.format == "PNG" and min(image.size) >= 100, (plot, image.size)


def test_caption_cli_prints_the_caption_of_one_image(trained, tmp_path):
    png = sorted((trained[1] / "shapes" / "generated" / "images").glob("test_*.png"))[0]
    with Image.open(png) as image:
        image.convert("RGB").save(tmp_path / "photo.jpg")
    done = run_cli("caption.py", f"checkpoint={trained[0]}", "images=photo.jpg",
                   "progress=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [expected] = Captioner.from_checkpoint(trained[0]).caption_files(
        [str(tmp_path / "photo.jpg")], Decoding(beam_size=3, max_len=30))
    assert done.stdout == f"photo.jpg\t{expected.text}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["checkpoint=missing.ckpt", "images=."], "error: missing.ckpt: checkpoint not found"),
    (["images=nowhere"], "error: nowhere: no such image file or folder"),
])
def test_caption_cli_errors_are_one_line(trained, tmp_path, args, message):
    if not any(a.startswith("checkpoint=") for a in args):
        args.append(f"checkpoint={trained[0]}")
    done = run_cli("caption.py", *args, "output=x.tsv", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "x.tsv").exists()


def test_evaluate_scores_captions_against_every_reference(trained, tmp_path):
    done = run_cli("evaluate.py", f"checkpoint={trained[0]}", "data=shapes", "split=test",
                   f"data.root={trained[1]}", *TINY,
                   "output_dir=eval", "progress=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [entry] = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert entry["test_set"] == "test" and entry["sentences"] == 12
    assert "CIDEr-D" in done.stdout
    # Scored apart: the hypotheses file against every caption of each image in the
    # generated dataset.json (sacrebleu; pycocoevalcap's ROUGE-L and CIDEr-D).
    hyps = dict(line.split("\t") for line in
                (tmp_path / entry["hypotheses"]).read_text().splitlines())
    dataset = json.loads((trained[1] / "shapes" / "generated" / "dataset.json").read_text())
    images = trained[1] / "shapes" / "generated" / "images"
    refs = {str(images / i["filename"]): [s["raw"] for s in i["sentences"]]
            for i in dataset["images"] if i["split"] == "test"}
    assert hyps.keys() == refs.keys() and min(map(len, refs.values())) >= 2
    expected = caption_scores_apart(hyps, refs)
    assert {k: entry[k] for k in expected} == pytest.approx(expected, abs=0.01)
    assert len(set(hyps.values())) > 1 and expected["bleu4"] > 1  # captions worth scoring


def caption_scores_apart(hyps: dict[str, str], refs: dict[str, list[str]]) -> dict[str, float]:
    """BLEU-1..4 by sacrebleu with a reference stream per caption of an image, ROUGE-L
    and CIDEr-D by pycocoevalcap, x100, on lowercased words."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from sacrebleu.metrics import BLEU

    def words(text: str) -> str:
        return " ".join(w for w in text.lower().split() if w.isalnum())  # "," dropped

    gts = {k: [words(r) for r in refs[k]] for k in hyps}
    res = {k: [words(h)] for k, h in hyps.items()}
    streams = [[gts[k][j] if j < len(gts[k]) else None for k in hyps]
               for j in range(max(map(len, gts.values())))]
    scores = {f"bleu{n}": BLEU(tokenize="none", max_ngram_order=n).corpus_score(
        [res[k][0] for k in hyps], streams).score for n in range(1, 5)}
    scores["rouge_l"] = 100 * Rouge().compute_score(gts, res)[0]
    scores["cider"] = 100 * Cider().compute_score(gts, res)[0]
    return scores


# --- BatchNorm statistics recomputed before validation -----------------------------------------


class _Trainer:
    """What PreciseBatchNorm reads of a trainer."""

    sanity_checking = False

    def __init__(self, datamodule) -> None:
        self.datamodule = datamodule


def test_precise_batchnorm_recomputes_the_cnn_statistics_only(tmp_path):
    from torch import nn

    from nmt.training.callbacks import PreciseBatchNorm

    cfg = compose_train(caption_overrides(tmp_path))
    dm, module, _ = build(cfg, tmp_path / "run")
    norms = [m for m in module.model.encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    module.eval()
    for m in norms:
        m.running_mean.fill_(5.0)
    PreciseBatchNorm(batches=3).on_validation_epoch_start(_Trainer(dm), module)
    assert all(not m.training and m.momentum == 0.1 for m in norms)
    recomputed = [m.running_mean.clone() for m in norms]
    assert not torch.allclose(recomputed[0], torch.full_like(recomputed[0], 5.0))
    # By hand: the plain average over the same three batches (the same on every call).
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for batch in dm.calibration_batches(3):
            module.model.encoder.features(batch.src)
    for m, mean in zip(norms, recomputed, strict=True):
        torch.testing.assert_close(m.running_mean, mean)
    # The training order is untouched by the calibration batches.
    first = [b.indices.tolist() for b in dm.train_dataloader()]
    list(dm.calibration_batches(3))
    assert [b.indices.tolist() for b in dm.train_dataloader()] == first


def test_training_batches_mix_images_of_every_caption_length(tiny_dm):
    sampler = tiny_dm.train_sampler()
    lengths = tiny_dm.dataset("train").tgt_lengths
    spreads = [np.ptp(lengths[b]) for b in sampler.batches(0) if len(b) > 4]
    assert spreads and max(spreads) > 10  # one-shape and three-shape images together


@pytest.mark.parametrize("model", ["show_attend_tell", "show_attend_tell_resnet"])
def test_image_model_configs_build_with_their_optimizer_groups(model):
    cfg = compose_train(["task=caption", f"model={model}", "model.pretrained=null",
                         "model.freeze=false", "model.encoder_lr=0.0001"])
    from nmt.training.builders import make_module

    module = make_module(cfg, 1, 20)
    groups = module.parameter_groups()
    backbone = {id(p) for p in module.model.encoder.backbone_parameters()}
    assert groups[0]["lr"] == 0.0001 and {id(p) for p in groups[0]["params"]} == backbone
    assert not backbone & {id(p) for p in groups[1]["params"]}
    optimizer = module.configure_optimizers()["optimizer"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.0001, cfg.optim.lr]

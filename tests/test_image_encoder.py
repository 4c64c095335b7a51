"""The image encoder (shapes, cached features, freezing, grids, weights files, errors,
checkpoints, training) and the attention gate."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_model import make, toy_batch
from test_registry import checkpoint_of
from train_helpers import ROOT

from nmt.core.tokens import BOS_ID, EOS_ID
from nmt.data.captioning import ImageSettings, cache_features
from nmt.model import build_model, model_from_checkpoint
from nmt.model.backbones import import_torchvision
from nmt.model.image_encoder import ImageEncoder
from nmt.training.module import label_smoothed_nll

V = 23  # test_model's vocabulary (toy_batch)
CHANNELS = [4, 8, 8, 8, 12]  # a tiny "small" backbone: 12 channels, grid = size / 8
IMAGE_SMALL = {"encoder": "image", "channels": CHANNELS, "emb_size": 8, "image_size": 16,
               "decoder_hidden": 12, "dropout": 0.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def image_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """toy_batch's shape for image models: 4 images of 16x16 (a 2x2 grid), 4 cells each."""
    return images(4, 16, seed), torch.full((4,), 4), toy_batch(seed)[2]


def encoder(backbone: str = "small", **kwargs) -> ImageEncoder:
    torch.manual_seed(0)
    return ImageEncoder(backbone, CHANNELS, **kwargs)


def one_line_error(fn, match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("backbone", "size", "grid", "channels"), [
    ("small", 64, (8, 8), 12), ("resnet18", 64, (2, 2), 512)])
def test_shapes(backbone, size, grid, channels):
    enc = encoder(backbone)
    memory, mask, final = enc(images(2, size), torch.full((2,), grid[0] * grid[1]))
    cells = grid[0] * grid[1]
    assert memory.shape == (2, cells, channels) and final.shape == (2, channels)
    assert mask.shape == (2, cells) and mask.dtype == torch.bool and mask.all()
    assert enc.grid_shape(size) == grid
    assert enc.output_size == enc.feature_size == channels
    assert not enc.frozen and enc.backbone_parameters() == list(enc.backbone.parameters())


def test_cells_are_row_major():
    """Cell row * w + col is the grid's (row, col) of the 8x8 grid."""
    enc = encoder().eval()
    x = images(1, 64)
    with torch.no_grad():
        features = enc.features(x)  # (1, 64, C)
        grid = enc.backbone(x)  # (1, C, 8, 8)
    for row, col in [(0, 7), (7, 0), (2, 5), (7, 7)]:
        torch.testing.assert_close(features[0, 8 * row + col], grid[0, :, row, col])


def test_final_is_the_mean_of_the_cells():
    enc = encoder().eval()
    with torch.no_grad():
        memory, _, final = enc(images(), torch.full((2,), 4))
    torch.testing.assert_close(final, memory.mean(1))


def test_cached_features_give_what_images_give(tmp_path):
    torch.manual_seed(0)
    model = build_model(IMAGE_SMALL, 1, V).eval()
    _, lengths, tgt = image_batch()
    pixels = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    settings = ImageSettings(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    # What the data caches (float16 on disk), against the backbone's grid read cell by
    # cell, row-major, of the images normalised here by hand.
    cached = torch.from_numpy(np.array(cache_features(pixels.numpy(), model.encoder, settings,
                                                      tmp_path))).float()
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (settings.mean, settings.std))
    x = (pixels.permute(0, 3, 1, 2) / 255 - mean) / std  # (4, 3, 16, 16)
    with torch.no_grad():
        grid = model.encoder.backbone(x)  # (4, 12, 2, 2)
        cells = torch.stack([grid[:, :, r, c] for r in range(2) for c in range(2)], dim=1)
        torch.testing.assert_close(cached, cells, atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(model(cached, lengths, tgt), model(x, lengths, tgt),
                                   atol=2e-3, rtol=2e-3)


def test_frozen_backbone_gets_no_gradients_and_keeps_its_statistics():
    enc = encoder("resnet18", freeze=True).train()
    assert enc.frozen and enc.training and not enc.backbone.training
    stats = {k: v.clone() for k, v in enc.backbone.state_dict().items()}
    memory, _, final = enc(images(), torch.full((2,), 4))
    assert not memory.requires_grad and not final.requires_grad
    assert all(not p.requires_grad and p.grad is None for p in enc.backbone_parameters())
    for key, value in enc.backbone.state_dict().items():
        assert torch.equal(value, stats[key]), key
    trained = encoder("resnet18").train()
    trained(images(), torch.full((2,), 4))[2].sum().backward()
    assert all(p.grad is not None for p in trained.backbone_parameters())
    assert not torch.equal(trained.backbone.bn1.running_mean, stats["bn1.running_mean"])


@pytest.mark.parametrize(("grid", "shape"), [(2, (2, 2)), ([1, 3], (1, 3))])
def test_grid_pooling(grid, shape):
    pooled, plain = encoder(grid=grid).eval(), encoder().eval()
    x = images(2, 64)
    with torch.no_grad():
        feats = pooled.features(x)  # (2, h * w, C)
        full = plain.backbone(x)  # (2, C, 8, 8): the same weights (seed 0)
    assert pooled.grid_shape(64) == shape and feats.shape == (2, shape[0] * shape[1], 12)
    expected = torch.nn.functional.adaptive_avg_pool2d(full, shape).flatten(2).transpose(1, 2)
    torch.testing.assert_close(feats, expected)


def resnet18_file(tmp_path) -> tuple[str, dict]:
    """A random torchvision resnet18's state_dict, fc included, saved as a .pth file."""
    torch.manual_seed(1)
    state = import_torchvision().models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return str(path), state


def test_loads_a_local_state_dict(tmp_path):
    path, state = resnet18_file(tmp_path)
    assert "fc.weight" in state
    loaded = encoder("resnet18", pretrained=path).backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(value, state[key]) for key, value in loaded.items())


def test_checkpoint_round_trip():
    torch.manual_seed(0)
    model = build_model({**IMAGE_SMALL, "attention_gate": True}, 1, V).eval()
    loaded = model_from_checkpoint(checkpoint_of(model)).eval()
    x, lengths, tgt = image_batch()
    with torch.no_grad():
        assert torch.equal(loaded(x, lengths, tgt), model(x, lengths, tgt))
    assert loaded.record == model.record
    assert loaded.record["config"]["image_mean"] == [0.485, 0.456, 0.406]


def test_checkpoint_needs_no_pretrained_file(tmp_path):
    path, _ = resnet18_file(tmp_path)
    config = {**IMAGE_SMALL, "backbone": "resnet18", "pretrained": path, "freeze": True}
    model = build_model(config, 1, V).eval()
    ckpt = checkpoint_of(model)
    (tmp_path / "resnet18.pth").unlink()  # the checkpoint travels without it
    loaded = model_from_checkpoint(ckpt).eval()
    assert loaded.record["config"]["pretrained"] == path and loaded.encoder.frozen
    assert not loaded.train().encoder.backbone.training  # Seq2Seq.train reaches the override
    loaded.eval()
    x, lengths, tgt = image_batch()
    with torch.no_grad():
        assert torch.equal(loaded(x, lengths, tgt), model(x, lengths, tgt))


def test_an_image_model_learns():
    """Captions name the quadrant of a bright square: within 60 steps the loss falls and
    every image gets its word (eval mode: BatchNorm's running statistics)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=g) * 0.1  # a 4x4 grid
    quadrant = torch.arange(8) % 4
    for i, q in enumerate(quadrant.tolist()):
        row, col = divmod(q, 2)
        x[i, :, 16 * row: 16 * row + 16, 16 * col: 16 * col + 16] += 2.0
    words = 4 + quadrant  # one word per quadrant
    tgt_in = torch.stack([torch.full((8,), BOS_ID), words], 1)
    tgt_out = torch.stack([words, torch.full((8,), EOS_ID)], 1)
    lengths = torch.full((8,), 16)
    torch.manual_seed(0)
    model = build_model({**IMAGE_SMALL, "image_size": 32}, 1, V)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, nll, n = label_smoothed_nll(model(x, lengths, tgt_in), tgt_out, 0.0)
        opt.zero_grad()
        (loss / n).backward()
        opt.step()
        losses.append(nll.item() / n.item())
    assert losses[-1] < 0.1 * losses[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(x, lengths, tgt_in)[:, 0].argmax(-1), words)


@pytest.mark.parametrize(("make_error", "match"), [
    (lambda: encoder("vgg16"), "^unknown backbone 'vgg16'; valid choices: small, resnet18, "
                               "resnet34, resnet50$"),
    (lambda: encoder(pretrained="imagenet"), "^pretrained=imagenet needs a ResNet backbone"),
    (lambda: encoder("resnet18", pretrained="/no/such.pth"), "^pretrained=/no/such.pth: no such"),
    (lambda: encoder()(torch.zeros(2, 16), torch.ones(2)), r"^the image encoder takes images "
                                                           r"\(B, 3, H, W\) or features"),
    (lambda: encoder()(torch.zeros(2, 1, 16, 16), torch.ones(2)), r"^images must be \(B, 3,"),
    (lambda: encoder()(torch.zeros(2, 4, 7), torch.ones(2)), r"^features must be \(B, S, 12\)"),
    (lambda: encoder()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.ones(2)),
     "^images must be float and normalised, got torch.uint8$"),
    (lambda: encoder()(torch.zeros(2, 4, 12), torch.ones(3)), r"^src_lengths must be \(2,\)"),
])
def test_one_line_errors(make_error, match):
    one_line_error(make_error, match)


def test_unusable_weights_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    one_line_error(lambda: encoder("resnet18", pretrained=str(garbage)),
                   f"^pretrained={garbage}: not a readable state_dict")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    one_line_error(lambda: encoder("resnet18", pretrained=str(tmp_path / "list.pth")),
                   "not a state_dict \\(a dict of tensors\\)$")
    path, _ = resnet18_file(tmp_path)
    one_line_error(lambda: encoder("resnet34", pretrained=path),
                   f"^pretrained={path}: does not fit resnet34")


@pytest.mark.parametrize(("config", "match"), [
    ({"backbone": "vit"}, "^unknown backbone 'vit'; valid choices: small, resnet18"),
    ({"channels": [4, 8]}, r"^channels must be 5 positive integers, got \[4, 8\]$"),
    ({"pretrained": "imagenet"}, "^pretrained=imagenet needs a ResNet backbone; backbone=small"),
    ({"pretrained": 3}, "^pretrained must be null, 'imagenet' or a state_dict file, got 3$"),
    ({"freeze": "yes"}, "^freeze must be true or false, got 'yes'$"),
    ({"grid": 0}, "^grid must be null, a positive integer or"),
    ({"image_size": 0}, "^image_size must be a positive integer, got 0$"),
    ({"image_mean": [0.5]}, r"^image_mean must be 3 numbers \(R, G, B\)"),
    ({"image_std": [0.2, 0.0, 0.2]}, "^image_std must be positive"),
    ({"encoder_lr": -1e-4}, "^encoder_lr must be null or a positive number, got -0.0001$"),
    ({"tie_src_tgt": True}, "^tie_src_tgt: the image encoder has no token embeddings"),
    ({"encoder_hidden": 8}, r"^unknown key\(s\) \['encoder_hidden'\] for encoder 'image'"),
    ({"attention_gate": 1}, "^attention_gate must be true or false, got 1$"),
])
def test_bad_image_options(config, match):
    one_line_error(lambda: build_model({**IMAGE_SMALL, **config}, V, V), match)


def test_torchvision_import_works_beside_lightning_or_is_one_line():
    """In a fresh process: after ``import nmt``, lightning (whose torchmetrics imports an
    installed torchvision) imports; a missing torchvision is one line naming the backbone;
    the import works (with placeholder ops if need be)."""
    script = """if True:
        import sys
        import nmt, lightning
        from nmt.model import backbones as image_encoder
        nmt.model.build_model({"encoder": "image"}, 1, 5)
        print("imported")
        sys.modules["torchvision"] = None
        try:
            image_encoder.import_torchvision("resnet34")
        except ValueError as e:
            print(e)
        sys.modules.pop("torchvision", None)
        print(hasattr(image_encoder.import_torchvision().models, "resnet50"))
    """
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "imported" and lines[2] == "True"
    assert lines[1].startswith("model.backbone=resnet34 needs torchvision: ModuleNotFoundError")


# --- the attention gate -----------------------------------------------------------------------


def test_attention_gate_parameters_only_when_on():
    gated = make(attention_gate=True)
    assert gated.decoder.gate.weight.shape == (12, 12)  # (memory, hidden): bi-RNN 2 x 6
    assert not any("gate" in name for name, _ in make().named_parameters())
    one_line_error(lambda: make(attention_gate=True, attention="none"),
                   "^attention_gate needs an attention; attention=none has no context")


def test_models_without_the_gate_are_unchanged():
    src, lengths, tgt = toy_batch()
    default, off = make().eval(), make(attention_gate=False).eval()
    assert default.state_dict().keys() == off.state_dict().keys()
    assert all(torch.equal(v, off.state_dict()[k]) for k, v in default.state_dict().items())
    ckpt = checkpoint_of(default)
    del ckpt["model_record"]["config"]["attention_gate"]  # a checkpoint from before the gate
    loaded = model_from_checkpoint(ckpt).eval()
    assert loaded.record["config"]["attention_gate"] is False
    with torch.no_grad():
        assert torch.equal(loaded(src, lengths, tgt), default(src, lengths, tgt))
        gated = make(attention_gate=True).eval()(src, lengths, tgt)
    assert not torch.allclose(gated, default(src, lengths, tgt))


def test_positions_are_learned_per_cell_of_the_model_grid():
    model = build_model(IMAGE_SMALL, 1, V)  # 16x16 images: a 2x2 grid of 12 channels
    assert model.encoder.position.shape == (4, 12)
    x, lengths, _ = image_batch()
    with torch.no_grad():
        memory, _, final = model.encoder.eval()(x, lengths)
        features = model.encoder.features(x)
    torch.testing.assert_close(memory, features + model.encoder.position)
    torch.testing.assert_close(final, features.mean(1))  # the mean of the content only
    one_line_error(lambda: model.encoder(images(2, 32), torch.full((2,), 16)),
                   "^the feature grid has 16 cells, the model knows positions for 4: give "
                   "images of the model's image_size$")
    plain = build_model({**IMAGE_SMALL, "positions": False}, 1, V)
    assert plain.encoder.position is None
    assert not any("position" in name for name, _ in plain.named_parameters())


def test_small_cells_are_centred_on_their_own_pixels():
    """Cell (r, c) of the small CNN is centred on pixels 8r..8r+7 x 8c..8c+7 (not
    half a cell off): a pixel changes the cells around it symmetrically."""
    enc = encoder().eval()
    x = images(1, 64)
    with torch.no_grad():
        base = enc.features(x)[0]  # (64, C)

        def changed_cells(row: int, col: int) -> set[int]:
            y = x.clone()
            y[0, :, row, col] += 3.0
            diff = (enc.features(y)[0] - base).abs().sum(-1)
            return set(torch.nonzero(diff > 1e-5).flatten().tolist())

    # Inside cell (3, 4): it and its 8 neighbours (the last 3x3), centred on (3, 4).
    assert changed_cells(8 * 3 + 3, 8 * 4 + 4) == {8 * r + c for r in (2, 3, 4)
                                                   for c in (3, 4, 5)}
    # At the corner of four cells: the 4 x 4 cells around that corner, symmetric.
    assert changed_cells(8 * 3, 8 * 4) == {8 * r + c for r in (1, 2, 3, 4)
                                           for c in (2, 3, 4, 5)}

"""Gradient flow (nmt/model/probe.py, nmt/training/gradients.py, gradient_report.py): the
step-by-step encoder is the fused one, its state gradients are autograd's, the vanishing
gradient shows where it must, and the callback and command write what they promise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import files_config
from PIL import Image
from train_helpers import ROOT, compose_train, toy_overrides, train_two_ranks

from nmt.model import build_model
from nmt.model.probe import layer_gradient_norms, layer_name, state_gradients, stepped_encoder
from nmt.training.gradients import summarize
from nmt.training.loggers import read_rows

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"


def tiny(cell: str, bidirectional: bool = True, layers: int = 2, attention: str = "bahdanau"):
    torch.manual_seed(0)
    return build_model({"cell": cell, "emb_size": 16, "encoder_hidden": 12,
                        "decoder_hidden": 20, "bidirectional": bidirectional,
                        "encoder_layers": layers, "attention": attention}, 50, 50).eval()


def padded_batch():
    torch.manual_seed(1)
    src = torch.randint(4, 50, (3, 7))
    lengths = torch.tensor([7, 4, 2])
    src[1, 4:] = 0
    src[2, 2:] = 0
    tgt = torch.randint(4, 50, (3, 5))
    return src, lengths, tgt


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_the_stepped_encoder_is_the_fused_one(cell, bidirectional):
    model = tiny(cell, bidirectional)
    src, lengths, _ = padded_batch()
    memory, mask, final = model.encoder(src, lengths)
    memory2, mask2, final2, states = stepped_encoder(model.encoder, src, lengths)
    torch.testing.assert_close(memory2, memory)
    assert torch.equal(mask2, mask)
    for a, b in zip(final if isinstance(final, tuple) else (final,),
                    final2 if isinstance(final2, tuple) else (final2,), strict=True):
        torch.testing.assert_close(b, a)
    assert len(states) == (2 if bidirectional else 1) and len(states[0]) == 7


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_its_graph_gives_autograds_gradients(cell):
    """The stepped graph's gradient at the embeddings is the fused recurrence's."""
    model = tiny(cell)
    src, lengths, tgt = padded_batch()
    grads = []
    for stepped in (False, True):
        model.zero_grad()
        enc = (model.encoder_output(*stepped_encoder(model.encoder, src, lengths)[:3])
               if stepped else model.encode(src, lengths))
        logits, _ = model.teacher_forced(enc, tgt)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten()).backward()
        grads.append(model.encoder.embed.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_a_contracting_tanh_rnn_forgets_the_start_unless_attention_reads_it():
    """Recurrent weights scaled down: the gradient shrinks at every step back from the last
    state, by orders of magnitude over 20 steps, unless attention reads each state."""
    src = torch.randint(4, 50, (4, 20))
    lengths = torch.full((4,), 20)
    tgt = torch.randint(4, 50, (4, 6))
    ratios = {}
    for attention in ("none", "bahdanau"):
        model = tiny("rnn", bidirectional=False, layers=1, attention=attention)
        with torch.no_grad():
            model.encoder.rnn.weight_hh_l0.mul_(0.2)
        found = summarize(state_gradients(model, src, lengths, tgt, tgt), lengths)
        ratios[attention] = found["first_last_ratio"]
        profile = found["by_position"]
        assert len(profile) == 20 and all(p > 0 for p in profile)
    assert ratios["none"] < 1e-6
    assert ratios["bahdanau"] > 1e-2


def test_no_parameter_gradient_is_touched():
    model = tiny("gru")
    src, lengths, tgt = padded_batch()
    model.train()
    norms = state_gradients(model, src, lengths, tgt, tgt)
    assert all(p.grad is None for p in model.parameters())
    assert model.training  # restored
    assert norms.shape == (3, 7, 2)
    assert (norms[1, 4:] == 0).all() and (norms[2, 2:] == 0).all() and (norms[:, :2] > 0).all()


def test_summaries_by_position_and_from_the_end():
    norms = torch.zeros(2, 4, 1)
    norms[0, :, 0] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    norms[1, :2, 0] = torch.tensor([5.0, 7.0])
    found = summarize(norms, torch.tensor([4, 2]))
    assert found["by_position"] == [3.0, 4.5, 3.0, 4.0]
    assert found["by_distance_from_end"] == [5.5, 4.0, 2.0, 1.0]  # (4+7)/2, (3+5)/2, 2, 1
    assert found["sentences_at"] == [2, 2, 1, 1]
    assert found["first"] == 3.0 and found["last"] == 5.5
    assert found["first_last_ratio"] == pytest.approx(3.0 / 5.5)
    assert found["directions"][0]["first_last_ratio"] == pytest.approx(3.0 / 5.5)


def test_layer_norms_group_parameters_by_layer():
    assert layer_name("encoder.rnn.weight_hh_l1_reverse") == "encoder.rnn.l1_reverse"
    assert layer_name("encoder.rnn.bias_ih_l0") == "encoder.rnn.l0"
    assert layer_name("decoder.attention.key.weight") == "decoder.attention.key"
    model = tiny("lstm")
    src, lengths, tgt = padded_batch()
    logits = model(src, lengths, tgt)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt.flatten()).backward()
    norms = layer_gradient_norms(model)
    rnn = model.encoder.rnn
    expected = torch.cat([getattr(rnn, f"{n}_l1").grad.flatten()
                          for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]).norm()
    assert norms["encoder.rnn.l1"] == pytest.approx(float(expected), rel=1e-5)
    assert {"encoder.rnn.l0", "encoder.rnn.l0_reverse", "encoder.rnn.l1_reverse",
            "tgt_embed"} <= set(norms)


def toy_run(toy_dir, tmp, name, *more):
    from nmt.training.train import train

    run = tmp / name
    train(compose_train([*toy_overrides(files_config(toy_dir, tmp / "cache"), run),
                         "trainer.max_epochs=2", "test_after_training=false", "seed=3",
                         *more]))
    return run


@pytest.fixture(scope="module")
def probed_runs(toy_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gradients")
    return (toy_run(toy_dir, tmp, "plain"),
            toy_run(toy_dir, tmp, "probed", "callbacks.gradient_flow.every_n_steps=2",
                    "callbacks.gradient_flow.sentences=16", "trainer.log_every_n_steps=7"))


def test_the_callback_logs_layers_and_profiles_without_changing_training(probed_runs):
    plain, probed = probed_runs
    a = torch.load(plain / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(probed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (plain / "gradients.json").exists()
    history = json.loads((probed / "gradients.json").read_text())
    assert len(history) == 2 and history[0]["step"] < history[1]["step"]  # a validation an epoch
    assert history[0]["sentences"] == 16 and len(history[0]["by_position"]) > 5
    rows = read_rows(probed / "logs" / "metrics.csv")
    assert "grad_norm/encoder.rnn.l0" in rows[0] and "grad_norm/decoder.rnn.l0" in rows[0]
    steps = [int(r["step"]) for r in rows if r["grad_norm/encoder.rnn.l0"]]
    last = int(torch.load(probed / "checkpoints" / "last.ckpt")["global_step"])
    assert steps == list(range(0, last, 2))  # every second step, whatever log_every_n_steps
    assert (probed / "gradients.png").read_bytes()[:8] == PNG


def test_a_resumed_run_keeps_its_gradient_history(toy_dir, tmp_path):
    probe = ["callbacks.gradient_flow.every_n_steps=2", "callbacks.gradient_flow.sentences=8"]
    run = toy_run(toy_dir, tmp_path, "run", *probe, "trainer.max_epochs=1")
    first = json.loads((run / "gradients.json").read_text())
    toy_run(toy_dir, tmp_path, "run", *probe, "trainer.max_epochs=2", "ckpt_path=last")
    history = json.loads((run / "gradients.json").read_text())
    assert len(first) == 1 and len(history) == 2 and history[0] == first[0]
    assert history[1]["step"] > history[0]["step"]


def test_the_command_overlays_checkpoints_and_writes_json(probed_runs, toy_dir, tmp_path):
    ckpts = [str(run / "checkpoints" / "last.ckpt") for run in probed_runs]
    out = tmp_path / "g.png"
    common = [sys.executable, "-m", "nmt.cli", "gradients", f"src={toy_dir / 'valid.en'}",
              f"ref={toy_dir / 'valid.de'}", "sentences=20"]
    result = subprocess.run([*common, f"checkpoint=[{ckpts[1]}]", "untrained=true",
                             f"output={out}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["sentences"] == 20 and report["untrained"] is True
    with Image.open(out) as image:  # the per-layer panel of the probed run: three panels
        assert image.size[0] >= 1100
    result = subprocess.run([*common, f"checkpoint=[{ckpts[0]},{ckpts[1]}]",
                             f"output={out}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert [m["label"] for m in report["models"]] == ["plain/last", "probed/last"]
    assert all(m["first_last_ratio"] > 0 for m in report["models"])
    summary = json.loads(result.stdout)
    assert summary["json"] == str(out.with_suffix(".json"))


def test_the_command_refuses_bad_input_in_one_line(probed_runs, toy_dir, tmp_path):
    ckpt = probed_runs[0] / "checkpoints" / "last.ckpt"
    result = subprocess.run([sys.executable, "-m", "nmt.cli", "gradients", f"checkpoint={ckpt}",
                             f"src={toy_dir / 'valid.en'}", f"ref={toy_dir / 'valid.de'}",
                             "sentences=0", f"output={tmp_path / 'g.png'}"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "sentences must be a positive integer" in result.stderr
    assert "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "nmt.cli", "gradients", f"checkpoint={ckpt}",
                             f"src={toy_dir / 'valid.en'}", f"ref={toy_dir / 'valid.de'}",
                             f"output={tmp_path}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: output={tmp_path} is a directory; give a file name"


@pytest.mark.slow
def test_the_callback_under_ddp_probes_on_rank_0_between_steps(toy_dir, tmp_path):
    """Two gloo processes: rank 0 probes at a validation in mid-epoch, and both ranks go on
    to the last step together (no gradient hook of DDP's fires for the probe)."""
    run = tmp_path / "run"
    ranks = train_two_ranks([*toy_overrides(files_config(toy_dir, tmp_path / "cache"), run),
                             "trainer.max_steps=6", "trainer.val_check_interval=3",
                             "callbacks.gradient_flow.every_n_steps=1",
                             "test_after_training=false"], tmp_path)
    assert all(r["global_step"] == 6 for r in ranks)
    history = json.loads((run / "gradients.json").read_text())
    assert history and history[0]["step"] == 3
    steps = [int(r["step"]) for r in read_rows(run / "logs" / "metrics.csv")
             if r.get("grad_norm/encoder.rnn.l0")]
    assert steps == list(range(6))


def test_checkpoints_that_cannot_be_probed_are_named(tmp_path):
    from nmt.core.errors import CheckpointError
    from nmt.training.gradient_report import load

    with pytest.raises(CheckpointError, match="an exported model"):
        load(str(tmp_path), untrained=False, seed=1)
    captioner = tmp_path / "caption.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "tokenizers": {"tgt": b"spm"}},
               captioner)
    with pytest.raises(CheckpointError, match="image captioning model; gradient flow needs"):
        load(str(captioner), untrained=False, seed=1)

"""export.py and exported models: ONNX graphs equal to the PyTorch model through the same
search, int8, the manifest's checks, atomic export, the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import torch
from conftest import toy_pairs, write_side
from hydra import compose, initialize_config_dir
from train_helpers import ROOT, train_toy_model

from nmt.core.errors import CheckpointError, ConfigError
from nmt.core.tokens import EOS_ID, PAD_ID
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.dispatch import SourceBatch, decode
from nmt.decoding.options import Decoding
from nmt.inference.translator import Translator
from nmt.model import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from nmt.export import exporter
from nmt.export.exporter import export_checkpoint
from nmt.export.graphs import export_graphs
from nmt.export.runtime import OnnxSeq2Seq

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 40
BASE = {"emb_size": 16, "encoder_hidden": 16, "decoder_hidden": 24, "dropout": 0.0}
# Every cell, 1-2 layers each side, one or two directions, every attention (none too),
# input feeding on and off, bridges, gate, untied output layer.
ARCHITECTURES = [
    {"cell": "lstm", "encoder_layers": 2, "decoder_layers": 2, "input_feeding": True},
    {"cell": "lstm", "bidirectional": False, "attention": "luong_general",
     "input_feeding": False},
    {"cell": "gru", "encoder_layers": 2, "attention": "luong_concat", "input_feeding": False},
    {"cell": "gru", "attention": "luong_dot", "decoder_hidden": 32, "attention_gate": True},
    {"cell": "rnn", "encoder_layers": 2, "decoder_layers": 2, "input_feeding": True},
    {"cell": "rnn", "bidirectional": False, "attention": "none", "input_feeding": False},
    {"cell": "lstm", "bridge": "zeros", "tie_embeddings": False, "input_feeding": False},
]


def ragged_batch(lengths: list[int], extra: int = 0, seed: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of these lengths (EOS included), unsorted, right-padded (+ ``extra``)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths) + extra), PAD_ID, dtype=torch.long)
    for row, n in enumerate(lengths):
        src[row, : n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=g)
        src[row, n - 1] = EOS_ID
    return src, torch.tensor(lengths)


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: "-".join(map(str, a.values())))
def test_onnx_graphs_equal_the_model(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model({**BASE, **arch}, VOCAB, VOCAB).eval()
    export_graphs(model, tmp_path)
    onnx = OnnxSeq2Seq(tmp_path / "encoder.onnx", tmp_path / "step.onnx")
    # Traced on 3 sentences: other batch sizes, unsorted, one more PAD column than needed.
    for src, lengths in (ragged_batch([7]), ragged_batch([4, 9, 1, 6, 2], extra=1)):
        with torch.inference_mode():
            want, got = model.encode(src, lengths), onnx.encode(src, lengths)
            state = model.init_state(want)
        mask = want.mask.unsqueeze(-1)
        torch.testing.assert_close(got.memory * mask, want.memory * mask, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.keys * mask, want.keys * mask, atol=1e-5, rtol=1e-4)
        assert torch.equal(got.mask, want.mask)
        # The decoder's first state comes from each sequence's last real token (both ways).
        parts = state.hidden if isinstance(state.hidden, tuple) else (state.hidden,)
        for w, g in zip(parts, onnx.init_state(got), strict=False):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    batch = SourceBatch(src[:, :-1], lengths)
    for decoding in (Decoding(beam_size=1), Decoding(beam_size=3, n_best=2)):
        hyps = decode(model, batch, decoding, return_attention=True)
        found = decode(onnx, batch, decoding, return_attention=True)
        assert [[h.tokens for h in hs] for hs in found] == [[h.tokens for h in hs] for hs in hyps]
        for hs, fs in zip(hyps, found, strict=True):
            for h, f in zip(hs, fs, strict=True):
                assert f.score == pytest.approx(h.score, abs=1e-4)
                if arch.get("attention") == "none":
                    assert f.attention is None and h.attention is None
                else:
                    torch.testing.assert_close(f.attention, h.attention, atol=1e-5, rtol=1e-4)


# --- a trained toy model, exported ------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(toy_dir, tmp_path_factory) -> Path:
    """A tiny model trained a few epochs on the toy corpus (LSTM, input feeding)."""
    return train_toy_model(toy_dir, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("exported")
    return {fmt: Path(export_checkpoint(checkpoint, fmt, out / fmt)["output"])
            for fmt in ("onnx", "int8")}


SENTENCES = [s for s, _ in toy_pairs(24, seed=7)]


def test_manifest_describes_the_directory(exported, checkpoint):
    manifest = json.loads((exported["onnx"] / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and manifest["format_version"] == 1
    assert manifest["source_checkpoint"] == "last.ckpt" and manifest["opset"] == 17
    assert manifest["model_record"]["config"]["cell"] == "lstm"
    assert manifest["src_vocab_size"] == manifest["tgt_vocab_size"] == 64
    assert sorted(manifest["files"]) == ["encoder.onnx", "src.spm", "step.onnx", "tgt.spm"]
    ckpt = load_checkpoint(checkpoint)
    assert (exported["onnx"] / "tgt.spm").read_bytes() == ckpt["tokenizers"]["tgt"]
    int8 = json.loads((exported["int8"] / "manifest.json").read_text())
    assert int8["format"] == "int8" and "MatMul" in int8["quantization"]["op_types"]
    assert (exported["int8"] / "step.onnx").stat().st_size < (
        exported["onnx"] / "step.onnx").stat().st_size


def test_exported_translates_as_the_checkpoint(exported, checkpoint):
    torch_tr, onnx_tr = Translator.from_checkpoint(checkpoint), Translator.from_checkpoint(
        exported["onnx"])
    inputs = [*SENTENCES, "", "a dog sees ."]
    for decoding in (Decoding(beam_size=1), Decoding(beam_size=5, n_best=3),
                     Decoding(sampling=True, seed=3)):
        want = torch_tr.translate(inputs, decoding, attention=True)
        got = onnx_tr.translate(inputs, decoding, attention=True)
        assert [t.texts for t in got] == [t.texts for t in want]
        assert got[0].source_pieces == want[0].source_pieces
        for w, g in zip(want, got, strict=True):
            for wh, gh in zip(w.hypotheses, g.hypotheses, strict=True):
                assert gh.score == pytest.approx(wh.score, abs=1e-4)
                if wh.attention is not None:
                    torch.testing.assert_close(gh.attention, wh.attention, atol=1e-5, rtol=1e-4)
    # mode=score goes through the steps too
    refs = [t for _, t in toy_pairs(24, seed=7)]
    for w, g in zip(torch_tr.score(SENTENCES, refs), onnx_tr.score(SENTENCES, refs), strict=True):
        assert g.length == w.length and g.total == pytest.approx(w.total, abs=1e-4)


def test_int8_loads_translates_and_mostly_agrees(exported, checkpoint):
    fp32 = Translator.from_checkpoint(checkpoint).translate_text(SENTENCES)
    int8 = Translator.from_checkpoint(exported["int8"]).translate_text(SENTENCES)
    assert all(int8) and len(int8) == len(SENTENCES)
    # The toy model is barely trained: its choices are close calls, which 7-bit weights
    # tip now and then (the real model: docs/export.md). Broken scales would agree nowhere.
    assert sum(a == b for a, b in zip(fp32, int8, strict=True)) >= len(SENTENCES) / 3
    assert sacrebleu.corpus_chrf(int8, [fp32]).score > 60


# --- errors -----------------------------------------------------------------------------------


def _copy(exported: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported["onnx"], tmp_path / "copy"))


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(("spoil", "message"), [
    (lambda d: (d / "manifest.json").unlink(), "a directory without manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "not readable JSON"),
    (lambda d: _edit_manifest(d, format="tflite"), "unknown export format 'tflite'"),
    (lambda d: _edit_manifest(d, format_version=2), "format_version 2; this toolkit reads"),
    (lambda d: (d / "step.onnx").unlink(), "step.onnx is missing"),
    (lambda d: (d / "encoder.onnx").write_bytes(b"changed"), "sha256 differs"),
    (lambda d: _edit_manifest(d, files={"../x": {}}), "incomplete manifest"),
])
def test_bad_export_directories(exported, tmp_path, spoil, message):
    directory = _copy(exported, tmp_path)
    spoil(directory)
    with pytest.raises(CheckpointError, match=message) as info:
        Translator.from_checkpoint(directory)
    assert "\n" not in str(info.value)


def test_export_refuses_cells_it_cannot_step(tmp_path):
    model = build_model(BASE, VOCAB, VOCAB)
    model.decoder.cell = "relu"  # a registered cell of one's own: StepGraph has no formula
    with pytest.raises(ConfigError, match="export handles the cells rnn, gru, lstm"):
        export_graphs(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_exported_models_run_alone_and_on_the_cpu(exported):
    with pytest.raises(ConfigError, match="translates alone"):
        Translator.from_checkpoint([exported["onnx"], exported["onnx"]])
    with pytest.raises(ConfigError, match="run on the CPU"):
        Translator.from_checkpoint(exported["onnx"], device="cuda")


def test_export_refuses_captioning_models_and_existing_outputs(checkpoint, exported, tmp_path):
    ckpt = load_checkpoint(checkpoint)
    ckpt["tokenizers"] = {"tgt": ckpt["tokenizers"]["tgt"]}  # what a captioning model carries
    torch.save(ckpt, tmp_path / "caption.ckpt")
    with pytest.raises(CheckpointError, match="image captioning model"):
        export_checkpoint(tmp_path / "caption.ckpt", "onnx", tmp_path / "out")
    with pytest.raises(ConfigError, match="format=fp16: valid choices: onnx, int8"):
        export_checkpoint(checkpoint, "fp16", tmp_path / "out")
    with pytest.raises(ConfigError, match="exists; remove it"):
        export_checkpoint(checkpoint, "onnx", exported["onnx"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not an export directory"):
        export_checkpoint(checkpoint, "onnx", tmp_path / "plain", overwrite=True)
    assert not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing_and_overwrite_replaces(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "models" / "onnx"
    export_checkpoint(checkpoint, "onnx", out)
    before = (out / "manifest.json").read_text()

    def broken(model: object, directory: Path, opset: int) -> list[str]:
        (directory / "encoder.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(exporter, "export_graphs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_checkpoint(checkpoint, "int8", tmp_path / "models" / "int8")
    with pytest.raises(RuntimeError, match="disk full"):
        export_checkpoint(checkpoint, "int8", out, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["onnx"]
    assert (out / "manifest.json").read_text() == before  # the earlier export, untouched
    monkeypatch.undo()
    export_checkpoint(checkpoint, "int8", out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["format"] == "int8"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["onnx"]


# --- the command line -------------------------------------------------------------------------


def compose_cli(config: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config, overrides=list(overrides))


def test_export_and_translate_configs(checkpoint, tmp_path, capsys):
    from nmt.cli import commands as cli

    out = tmp_path / "model-int8"
    summary = cli.export(compose_cli("export", f"checkpoint={checkpoint}", "format=int8",
                                     f"output={out}"))
    assert summary["format"] == "int8" and json.loads(capsys.readouterr().out) == summary
    inp = write_side(tmp_path / "in.en", SENTENCES[:8])
    cli.translate(compose_cli("translate", f"checkpoint={out}", f"input={inp}",
                              f"output={tmp_path / 'out.de'}", "progress=false", "workers=1"))
    want = Translator.from_checkpoint(out).translate_text(SENTENCES[:8])
    assert (tmp_path / "out.de").read_text().splitlines() == want
    # evaluate.py takes it as well (a list of one, as it passes checkpoints on)
    [entry] = cli.evaluate(compose_cli(
        "evaluate", f"checkpoint={out}", f"src={inp}", f"ref={inp}", "workers=1",
        f"output_dir={tmp_path / 'eval'}", "progress=false", "decoding=greedy"))
    assert entry["sentences"] == 8 and entry["checkpoint"] == str(out)
    capsys.readouterr()  # the logs and reports of those commands
    # user errors: one line, exit status 2
    (tmp_path / "empty").mkdir()
    for name, args, message in [
        ("translate", [f"checkpoint={tmp_path / 'empty'}", f"input={inp}"],
         "without manifest.json"),
        ("export", [f"checkpoint=[{checkpoint},{checkpoint}]", f"output={tmp_path / 'ens'}"],
         "export takes one checkpoint"),
        ("export", [f"checkpoint={checkpoint}", "format=fp16", f"output={tmp_path / 'x'}"],
         "format=fp16: valid choices"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            getattr(cli, name)(compose_cli(name, *args))
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "ens").exists() and not (tmp_path / "x").exists()


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.slow
def test_export_and_translate_commands(checkpoint, tmp_path):
    out = tmp_path / "model-onnx"
    result = run_cli("export.py", f"checkpoint={checkpoint}", "format=onnx", f"output={out}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "onnx"
    assert "Warning" not in result.stderr  # the exporter's native remarks are kept quiet
    inp = write_side(tmp_path / "in.en", SENTENCES[:8])
    result = run_cli("translate.py", f"checkpoint={out}", f"input={inp}",
                     f"output={tmp_path / 'out.de'}", "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    want = Translator.from_checkpoint(checkpoint).translate_text(SENTENCES[:8])
    assert (tmp_path / "out.de").read_text().splitlines() == want

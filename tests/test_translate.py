"""Translator, translate.py and evaluate.py on a tiny model trained on the toy corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import MULTI30K_TESTS, fake_multi30k_tests, files_config, toy_pairs, write_side
from omegaconf import OmegaConf
from train_helpers import ROOT, train_toy_model

from nmt.core.errors import CheckpointError, ConfigError
from nmt.data.test_sets import split_names
from nmt.decoding.checkpoints import load_checkpoint
from nmt.decoding.options import Decoding
from nmt.inference.translate import format_translation, translate_file
from nmt.inference.translator import Translator, length_batches


@pytest.fixture(scope="module")
def checkpoint(toy_dir, tmp_path_factory) -> Path:
    """A tiny model trained for a few epochs on the toy corpus (last.ckpt)."""
    return train_toy_model(toy_dir, tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def translator(checkpoint) -> Translator:
    return Translator.from_checkpoint(checkpoint)


SENTENCES = [s for s, _ in toy_pairs(12, seed=7)]


def run_cli(script: str, *args: str, cwd: Path, stdin: str | None = None):
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, text=True,
                          input=stdin, capture_output=True, timeout=300)


# --- Translator ------------------------------------------------------------------------------


def test_one_output_per_input_and_empty_lines(translator):
    inputs = [SENTENCES[0], "", "   ", SENTENCES[1], "\t"]
    out = translator.translate_text(inputs, Decoding(beam_size=3))
    assert len(out) == 5
    assert out[1] == out[2] == out[4] == ""
    assert out[0] and out[3]
    assert translator.translate([]) == [] and translator.translate_text([]) == []


def test_translations_carry_hypotheses(translator):
    inputs = [SENTENCES[0], "", SENTENCES[1]]
    full = translator.translate(inputs, Decoding(beam_size=4, n_best=3))
    assert [t.source for t in full] == inputs
    assert [t.text for t in full] == translator.translate_text(inputs, Decoding(beam_size=4))
    first = full[0].hypotheses
    assert len(first) == 3 and first[0].text == full[0].text
    assert [h.score for h in first] == sorted((h.score for h in first), reverse=True)
    assert translator.tgt_tokenizer.decode([first[1].tokens]) == [first[1].text]
    assert all(h.attention is None for h in first) and full[0].source_pieces == []
    assert [(h.text, h.score, h.tokens) for h in full[1].hypotheses] == [("", 0.0, [])] * 3


def test_attention_and_source_pieces_on_request(translator):
    [tr] = translator.translate([SENTENCES[0]], Decoding(beam_size=2), attention=True)
    pieces = translator.src_tokenizer.pieces(translator.src_tokenizer.encode([SENTENCES[0]])[0])
    assert pieces and tr.source_pieces == [*pieces, "</s>"]
    best = tr.hypotheses[0]
    assert best.attention.shape == (len(best.tokens) + 1, len(tr.source_pieces))
    assert best.attention.sum(-1) == pytest.approx(torch.ones(len(best.tokens) + 1), abs=1e-4)
    [plain] = translator.translate([SENTENCES[0]], Decoding(beam_size=2))
    assert plain.texts == tr.texts and plain.hypotheses[0].tokens == best.tokens


def test_order_and_batching_do_not_change_results(translator):
    beam4 = Decoding(beam_size=4)
    together = translator.translate_text(SENTENCES, beam4)
    reverse = translator.translate_text(SENTENCES[::-1], beam4)[::-1]
    alone = [translator.translate_text([s], beam4)[0] for s in SENTENCES]
    tiny_batches = translator.translate_text(SENTENCES, beam4, batch_tokens=30)
    assert together == reverse == alone == tiny_batches


def test_length_batches_are_sorted_and_greedy_under_the_budget():
    lengths = torch.randint(1, 30, (200,), generator=torch.Generator().manual_seed(3)).numpy()
    lengths[[5, 9]] = 80  # longer than the budget: alone
    batches = length_batches(lengths, 60)
    order = [int(j) for b in batches for j in b]
    assert order == sorted(range(200), key=lambda j: (lengths[j], j))  # stable by length
    for b, after in zip(batches, [*batches[1:], None], strict=True):
        cost = len(b) * lengths[b].max()
        assert cost <= 60 or len(b) == 1
        if after is not None:  # greedy: the next sentence did not fit
            assert (len(b) + 1) * lengths[after[0]] > 60
    assert [len(b) for b in batches if lengths[b].max() == 80] == [1, 1]
    assert length_batches(lengths[:0], 60) == []


def test_concurrent_calls_give_sequential_results(checkpoint, monkeypatch):
    translator = Translator.from_checkpoint(checkpoint, workers=2)
    sentences = SENTENCES + [s for s, _ in toy_pairs(20, seed=9)] + [""]
    settings = [Decoding(beam_size=1), Decoding(beam_size=3, n_best=2),
                Decoding(sampling=True, top_k=5), Decoding(beam_size=5)] * 2

    def run(d: Decoding) -> list:
        return [(t.texts, [h.score for h in t.hypotheses], t.truncated)
                for t in translator.translate(sentences, d, batch_tokens=80)]

    sequential = [run(d) for d in settings]

    def forbidden(*args):
        raise AssertionError("translation must not change torch's process-wide threads")

    monkeypatch.setattr(torch, "set_num_threads", forbidden)
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(run, settings))
    assert concurrent == sequential


def test_parallel_batches_give_what_one_batch_at_a_time_gives(checkpoint):
    parallel = Translator.from_checkpoint(checkpoint, workers=2)
    serial = Translator.from_checkpoint(checkpoint, workers=1)
    sentences = SENTENCES + [s for s, _ in toy_pairs(30, seed=8)] + [""]
    threads = torch.get_num_threads()
    for decoding in (Decoding(beam_size=1), Decoding(beam_size=3, n_best=2),
                     Decoding(sampling=True, top_k=5)):
        # batch_tokens=60: many small batches, decoded two at a time
        a = parallel.translate(sentences, decoding, batch_tokens=60)
        b = serial.translate(sentences, decoding, batch_tokens=60)
        assert [t.texts for t in a] == [t.texts for t in b]
        for ta, tb in zip(a, b, strict=True):
            assert [h.score for h in ta.hypotheses] == pytest.approx(
                [h.score for h in tb.hypotheses], abs=1e-4)
        assert torch.get_num_threads() == threads


def test_failing_batch_stops_parallel_decoding_and_keeps_threads(translator, monkeypatch):
    import nmt.inference.translator as module

    calls = []

    def failing(model, batch, *args, **kwargs):
        calls.append(batch.src.size(0))
        raise RuntimeError("boom")

    monkeypatch.setattr(module, "decode", failing)
    monkeypatch.setattr(translator, "workers", 2)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        translator.translate(SENTENCES * 5, Decoding(beam_size=2), batch_tokens=40)
    assert torch.get_num_threads() == threads
    assert 0 < len(calls) < 20  # the batches not yet started were cancelled


@pytest.mark.parametrize("option", ["workers", "max_src_len"])
def test_options_must_be_positive(checkpoint, option):
    with pytest.raises(ConfigError, match=f"{option} must be a positive integer"):
        Translator.from_checkpoint(checkpoint, **{option: 0})


def test_truncation_is_flagged_per_sentence(checkpoint):
    short = "Ein ."
    tr = Translator.from_checkpoint(checkpoint, max_src_len=4)
    assert len(tr.src_tokenizer.encode([short])[0]) <= 4 < len(
        tr.src_tokenizer.encode([SENTENCES[0]])[0])
    out = tr.translate([SENTENCES[0], short, ""], Decoding(beam_size=2))
    assert [t.truncated for t in out] == [True, False, False]


def test_max_src_len_counts_pieces_without_eos(checkpoint, translator):
    """A sentence of exactly max_src_len pieces is translated whole; one more is cut."""
    n = len(translator.src_tokenizer.encode([SENTENCES[0]])[0])
    assert translator.max_src_len == 250  # the default, not the training data's max_len
    whole = translator.translate([SENTENCES[0]], Decoding(beam_size=2))[0]
    exact = Translator.from_checkpoint(checkpoint, max_src_len=n)
    cut = Translator.from_checkpoint(checkpoint, max_src_len=n - 1)
    [at_limit] = exact.translate([SENTENCES[0]], Decoding(beam_size=2), attention=True)
    [over] = cut.translate([SENTENCES[0]], Decoding(beam_size=2), attention=True)
    assert not at_limit.truncated and at_limit.texts == whole.texts
    assert len(at_limit.source_pieces) == n + 1  # n pieces and EOS
    assert over.truncated and len(over.source_pieces) == n


def test_checkpoint_loads_with_weights_only(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    # The training data's max_len is not a translation setting (max_src_len is the
    # translator's own option): it no longer travels in the checkpoint.
    assert "max_src_len" not in ckpt["hyper_parameters"]
    assert isinstance(ckpt["tokenizers"]["src"], bytes)


@pytest.mark.parametrize(("content", "match"), [
    (None, "checkpoint not found"),
    (b"garbage, not a zip", "not a readable checkpoint"),
])
def test_bad_checkpoints(tmp_path, content, match):
    path = tmp_path / "model.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        Translator.from_checkpoint(path)


def test_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="carries no SentencePiece models"):
        Translator.from_checkpoint(tmp_path / "other.ckpt")


def test_interrupted_translation_leaves_no_file(translator, tmp_path, monkeypatch):
    inp = write_side(tmp_path / "in.txt", SENTENCES * 3)
    out = tmp_path / "out.txt"

    def explode(*args, **kwargs):
        yield from ()
        raise KeyboardInterrupt

    monkeypatch.setattr(translator, "translate_stream", explode)
    with pytest.raises(KeyboardInterrupt):
        translate_file(translator, str(inp), str(out), Decoding(), 4000, 4, progress=False)
    assert list(tmp_path.iterdir()) == [inp]  # neither the output nor a temporary file


def test_nbest_format(translator):
    [tr] = translator.translate([SENTENCES[0]], Decoding(beam_size=4, n_best=3))
    lines = format_translation(7, tr, 3).splitlines()
    assert len(lines) == 3 and all(line.startswith("7 ||| ") for line in lines)
    scores = [float(line.rsplit(" ||| ", 1)[1]) for line in lines]
    assert scores == sorted(scores, reverse=True)


# --- translate.py ----------------------------------------------------------------------------


def test_translate_command_files(checkpoint, tmp_path, translator):
    inputs = {"a": [SENTENCES[0], "", SENTENCES[1], "  ", SENTENCES[2]], "b": SENTENCES[3:6]}
    first, second = (write_side(tmp_path / f"{name}.en", s) for name, s in inputs.items())
    result = run_cli("translate.py", f"checkpoint={checkpoint}", f"input=[{first},{second}]",
                     f"output=[{tmp_path / 'a.de'},{tmp_path / 'b.de'}]", "progress=false",
                     f"attention_plots={tmp_path / 'plots'}", "attention_plots_n=2",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, lines in inputs.items():  # what the Translator gives with beam5.yaml
        expected = translator.translate_text(lines, Decoding(beam_size=5, alpha=0.6))
        assert (tmp_path / f"{name}.de").read_text() == "".join(t + "\n" for t in expected)
        assert [bool(t) for t in expected] == [bool(s.strip()) for s in lines]  # "" for blank
    plots = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert plots == ["a.en.0001.png", "b.en.0001.png", "b.en.0002.png"]  # line 2 of a is empty


def test_translate_command_stdin_stdout(checkpoint, tmp_path, translator):
    text = "\n".join([SENTENCES[0], "", SENTENCES[1]]) + "\n"
    result = run_cli("translate.py", f"checkpoint={checkpoint}", "decoding=greedy",
                     "progress=false", cwd=tmp_path, stdin=text)
    assert result.returncode == 0, result.stderr
    expected = translator.translate_text([SENTENCES[0], "", SENTENCES[1]], Decoding(beam_size=1))
    assert result.stdout == "\n".join(expected) + "\n"


def test_translate_command_counts_truncated_inputs(checkpoint, tmp_path):
    inp = write_side(tmp_path / "in.en", [SENTENCES[0], "Ein .", SENTENCES[1]])
    result = run_cli("translate.py", f"checkpoint={checkpoint}", f"input={inp}",
                     f"output={tmp_path / 'out.de'}", "max_src_len=4", "decoding=greedy",
                     "progress=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "in.en: 2 input(s) longer than 4 pieces were truncated" in result.stderr
    short = Translator.from_checkpoint(checkpoint, max_src_len=4)
    expected = short.translate_text([SENTENCES[0], "Ein .", SENTENCES[1]], Decoding(beam_size=1))
    assert (tmp_path / "out.de").read_text() == "".join(t + "\n" for t in expected)


@pytest.mark.parametrize(("make", "args", "message"), [
    (None, ["checkpoint=/no/model.ckpt"], "error: /no/model.ckpt: checkpoint not found"),
    ("garbage", [], "not a readable checkpoint"),
    ("latin1", [], r"in.txt, line 2: invalid UTF-8"),
    (None, ["input=/no/in.txt"], "error: /no/in.txt: input file not found"),
    (None, ["output=[x,y]"], "1 input(s) but 2 output(s)"),
    (None, ["decoding.beam_size=0"], "error: decoding: beam_size must be >= 1, got 0"),
    (None, ["decoding.max_len=99999999999999999999999"], "error: decoding: max_len is out of "
     "range (at most 2147483647 in size), got 99999999999999999999999"),
    (None, ["workers=0"], "error: workers must be a positive integer (or null), got 0"),
    (None, ["batch_tokens=0"], "error: batch_tokens must be a positive integer, got 0"),
    (None, ["max_src_len=null"], "error: max_src_len must be a positive integer"),
])
def test_translate_command_errors(checkpoint, tmp_path, make, args, message):
    inp = tmp_path / "in.txt"
    inp.write_bytes("Ein Hund .\nschl\xf6ssel\n".encode("latin-1") if make == "latin1"
                    else b"A dog .\n")
    ckpt = checkpoint
    if make == "garbage":
        ckpt = tmp_path / "bad.ckpt"
        ckpt.write_bytes(b"\x00" * 100)
    out = tmp_path / "out.txt"
    result = run_cli("translate.py", f"checkpoint={ckpt}", f"input={inp}", f"output={out}",
                     "progress=false", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr.replace("\\", "")
    assert "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.txt*"))


# --- evaluate.py -----------------------------------------------------------------------------


def test_evaluate_matches_sacrebleu_command_line(checkpoint, toy_dir, tmp_path):
    out = tmp_path / "eval"
    result = run_cli("evaluate.py", f"checkpoint={checkpoint}", f"src={toy_dir / 'test.en'}",
                     f"ref={toy_dir / 'test.de'}", f"output_dir={out}", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [entry] = json.loads((out / "report.json").read_text())
    assert entry["sentences"] == 30 and entry["sentences_per_s"] > 0
    assert entry["decoding"]["beam_size"] == 5
    assert entry["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    for metric in ("bleu", "chrf", "ter"):
        cli = subprocess.run([sys.executable, "-m", "sacrebleu", str(toy_dir / "test.de"),
                              "-i", entry["hypotheses"], "-m", metric, "-b", "-w", "4"],
                             capture_output=True, text=True, check=True)
        assert entry[metric] == pytest.approx(float(cli.stdout.strip()), abs=1e-4)
    assert "BLEU: nrefs:1" in result.stdout


def test_evaluate_several_checkpoints_and_splits(checkpoint, toy_dir, tmp_path):
    cfg = files_config(toy_dir, tmp_path / "cache")
    data = [f"data.files.{split}.{side}={cfg['files'][split][side]}"
            for split in ("valid", "test") for side in ("src", "tgt")]
    result = run_cli("evaluate.py", f"checkpoint=[{checkpoint},{checkpoint}]", "data=files",
                     "data.src_lang=en", "data.tgt_lang=de", *data, "split=[valid,test]",
                     "decoding=greedy", f"output_dir={tmp_path / 'eval'}", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [(Path(e["checkpoint"]).name, e["test_set"]) for e in report] == [
        ("last.ckpt", "valid"), ("last.ckpt", "test")] * 2
    table = [line for line in result.stdout.splitlines()
             if "last.ckpt" in line and " | " in line and not line.startswith("{")]
    assert len(table) == 4 and "| valid" in table[0]
    assert report[0]["sentences"] == 40  # the empty dev line is translated (to nothing) too


def test_evaluate_all_multi30k_test_sets_in_one_table(checkpoint, tmp_path):
    local = fake_multi30k_tests(tmp_path / "copy")  # the 2017/2018 sets, real sizes, toy text
    splits = list(MULTI30K_TESTS)
    result = run_cli("evaluate.py", f"checkpoint=[{checkpoint},{checkpoint}]",
                     "data=multi30k_en_de", f"data.local_dir={local}",
                     f"data.root={tmp_path / 'cache'}", f"split=[{','.join(splits)}]",
                     "decoding=greedy", f"output_dir={tmp_path / 'eval'}", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "checked by its line count (1071 lines, gzip, UTF-8)" in result.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [(e["test_set"], e["sentences"]) for e in report] == [*MULTI30K_TESTS.items()] * 2
    assert report[3]["bleu"] == report[0]["bleu"]  # the same checkpoint twice
    table = result.stdout[result.stdout.index("checkpoint | test set"):].splitlines()
    assert [c.strip() for c in table[0].split(" | ")][2:5] == ["BLEU", "chrF", "TER"]
    rows = [line.split(" | ") for line in table[2:] if " | " in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("last.ckpt", s) for s in splits] * 2


def test_evaluate_split_without_the_language_names_its_languages(checkpoint, tmp_path):
    result = run_cli("evaluate.py", f"checkpoint={checkpoint}", "data=multi30k_en_cs",
                     "split=[test_2016_flickr,test_2017_flickr]", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: corpus 'multi30k': split 'test_2017_flickr' has no language 'cs'; "
        "its languages: en, de, fr")


def multi30k(src: str, tgt: str):
    return OmegaConf.create({"corpus": "multi30k", "src_lang": src, "tgt_lang": tgt})


@pytest.mark.parametrize(("split", "data", "expected"), [
    ("all_tests", multi30k("en", "de"),
     ["test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr"]),
    ("all_tests", multi30k("cs", "en"), ["test_2016_flickr", "test_2018_flickr"]),
    (["val", "test_2018_flickr", "all_tests"], multi30k("en", "fr"),
     ["val", "test_2018_flickr", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco"]),
    (["valid", "test"], OmegaConf.create({"corpus": None}), ["valid", "test"]),
])
def test_split_names(split, data, expected):
    assert split_names(split, data) == expected


def test_all_tests_needs_a_catalog_corpus():
    with pytest.raises(ConfigError, match=r"split=all_tests needs a catalog corpus .*"
                       r"split=\[valid,test\]"):
        split_names("all_tests", OmegaConf.create({"corpus": None}))


def test_share_threads_shares_the_first_count_every_time(monkeypatch):
    # evaluate.run called in a loop (bench/recipe.py) must not halve the threads each time.
    from nmt.inference import options

    threads = torch.get_num_threads()
    monkeypatch.setattr(options, "_ALL_THREADS", [])
    torch.set_num_threads(4)  # whatever the test run's own setting (make test: 1)
    try:
        for _ in range(3):
            options.share_threads(2)
            assert torch.get_num_threads() == 2
        options.share_threads(1)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(threads)

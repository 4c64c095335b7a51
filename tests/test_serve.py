"""serve.py end to end: the real server in a subprocess on a free loopback port, a toy
translation model and an untrained tiny captioner, real HTTP requests."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_pairs
from PIL import Image
from train_helpers import ROOT

from nmt.core.tokens import BOS_ID, EOS_ID, PAD_ID
from nmt.data.tokenizer import TokenizerConfig, train_sentencepiece
from nmt.decoding.options import Decoding
from nmt.decoding.shortlist import from_lines as shortlist_from_lines
from nmt.inference.captioner import Captioner
from nmt.inference.translate import translate_file
from nmt.inference.translator import Translator, length_batches, pad_sources
from nmt.model import build_model
from nmt.model.registry import model_record

SENTENCES = [s for s, _ in toy_pairs(24, seed=21)]
# The translator in this process: one torch thread (tiny tensors; the server needs the CPU).
pytestmark = pytest.mark.usefixtures("one_thread")
LIMITS = ["limits.max_lines=8", "limits.max_chars=200", "limits.max_body_bytes=20000",
          "limits.max_beam_size=6"]


def save_checkpoint(model: torch.nn.Module, src: bytes | None, tgt: bytes, path: Path) -> Path:
    """What a training run's checkpoint holds for inference: weights, record, tokenizers."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {}, "model_record": model_record(model),
                "tokenizers": {"src": src, "tgt": tgt}}, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny model that has learnt the toy corpus: 120 Adam steps of a plain loop (seconds,
    where train.py's Trainer takes a minute on a busy machine)."""
    pairs = toy_pairs(600, seed=0)
    tokenizer = train_sentencepiece([s for pair in pairs for s in pair], TokenizerConfig(
        vocab_size=64, input_sentence_size=0))
    vocab = tokenizer.vocab_size
    src_ids = tokenizer.encode([s for s, _ in pairs])
    tgt_ids = tokenizer.encode([t for _, t in pairs])
    torch.manual_seed(0)
    model = build_model({"emb_size": 16, "encoder_hidden": 16, "decoder_hidden": 24,
                         "dropout": 0.0}, vocab, vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only spin
    for step in range(120):
        rows = [(7 * step + 13 * i) % len(pairs) for i in range(32)]
        src, src_lengths = pad_sources([src_ids[i] for i in rows], torch.device("cpu"))
        tgt, _ = pad_sources([tgt_ids[i] for i in rows], torch.device("cpu"))  # ids + EOS
        tgt_in = torch.cat([torch.full((32, 1), BOS_ID), tgt[:, :-1]], dim=1)
        tgt_in = tgt_in.masked_fill(tgt_in == EOS_ID, PAD_ID)
        logits = model(src, src_lengths, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    assert loss.item() < 0.5, "the toy model did not learn"
    path = tmp_path_factory.mktemp("translator") / "toy.ckpt"
    save_checkpoint(model.eval(), tokenizer.model_proto, tokenizer.model_proto, path)
    # A lexical shortlist table, as train.py writes (requests may ask for it).
    ckpt = torch.load(path, weights_only=True)
    ckpt["shortlist"] = shortlist_from_lines([s for s, _ in pairs], [t for _, t in pairs],
                                             tokenizer, tokenizer, 4, 8).state()
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def caption_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny captioner (16x16 images, a 2x2 grid) with a word tokenizer."""
    words = ["a red circle", "a blue square", "two green triangles", "one small star"]
    tokenizer = train_sentencepiece(words * 4, TokenizerConfig(
        joint=False, vocab_size=14, model_type="word", input_sentence_size=0))
    torch.manual_seed(0)
    model = build_model({"encoder": "image", "channels": [4, 8, 8, 8, 8], "emb_size": 8,
                         "image_size": 16, "decoder_hidden": 12, "dropout": 0.0},
                        1, tokenizer.vocab_size)
    path = tmp_path_factory.mktemp("captioner") / "caption.ckpt"
    return save_checkpoint(model, None, tokenizer.model_proto, path)


@pytest.fixture(scope="module")
def translator(checkpoint) -> Translator:
    return Translator.from_checkpoint(checkpoint)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, *overrides: str) -> None:
        self.port = free_port()
        self.log = tmp / f"server-{self.port}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "serve.py"), f"port={self.port}", *overrides],
                cwd=tmp, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 180
        while self.call("GET", "/health")[0] != 200:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the server did not start in time"
            time.sleep(0.3)

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, parsed JSON or text); status 0 if nothing answers."""
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, data, headers or {})
            response = conn.getresponse()
            payload = response.read().decode()
        except OSError:
            return 0, None
        finally:
            conn.close()
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(payload)
        return response.status, payload

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def server(checkpoint, caption_checkpoint, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "static").mkdir()
    (tmp / "static" / "index.html").write_text("<!doctype html><title>demo</title>")
    (tmp / "static" / "app.js").write_text("console.log('demo');")
    (tmp / "secret.txt").write_text("not served")
    running = Server(tmp, f"checkpoint={checkpoint}", f"caption_checkpoint={caption_checkpoint}",
                     f"static_dir={tmp / 'static'}", "batching.batch_timeout=0.05", *LIMITS)
    yield running
    assert running.stop() == 0, running.log.read_text()


def expected(translator: Translator, lines: list[str], request: dict[str, Any]) -> list:
    settings = {k: v for k, v in request.items() if k not in ("text", "attention")}
    found = translator.translate(lines, Decoding.from_dict(settings))
    return [[(h.text, h.score) for h in t.hypotheses] for t in found]


def served(response: dict[str, Any]) -> list:
    return [[(h["text"], h["score"]) for h in t["hypotheses"]]
            for t in response["translations"]]


def assert_same(got: list, want: list) -> None:
    """The same hypotheses, texts exactly, scores to 1e-4 (batches of other shapes)."""
    assert [[t for t, _ in hs] for hs in got] == [[t for t, _ in hs] for hs in want]
    for g, w in zip(got, want, strict=True):
        assert [s for _, s in g] == pytest.approx([s for _, s in w], abs=1e-4)


# --- translation -----------------------------------------------------------------------------


def test_requests_are_decoded_in_one_call_per_decoding_setting(translator):
    from nmt.serving.api import Job, translate_jobs

    beam2, beam3 = Decoding(beam_size=2), Decoding(beam_size=3)
    sample = Decoding(sampling=True, seed=5)
    jobs = [Job(SENTENCES[0:2], beam2, False), Job(SENTENCES[2:5], beam3, True),
            Job([SENTENCES[5], ""], beam2, True), Job(SENTENCES[6:7], sample, False),
            Job(SENTENCES[7:9], sample, False)]
    calls = []
    real = translator.translate

    def recording(lines, decoding, **kwargs):
        calls.append((len(lines), decoding, kwargs["attention"]))
        return real(lines, decoding, **kwargs)

    translator.translate = recording
    try:
        found = translate_jobs(translator, jobs, 10000)
    finally:
        del translator.translate
    # beam 2 together (with attention: one of them asked), beam 3, each sampling alone
    assert calls == [(4, beam2, True), (3, beam3, True), (1, sample, False), (2, sample, False)]
    for job, translations in zip(jobs, found, strict=True):
        assert [t.source for t in translations] == job.lines
        assert [t.texts for t in translations] == [
            t.texts for t in translator.translate(job.lines, job.decoding)]


@pytest.mark.parametrize("beam", [1, 3])
def test_a_call_is_cut_into_batches_for_every_worker(checkpoint, beam):
    from nmt.serving.api import call_budget

    two = Translator.from_checkpoint(checkpoint, workers=2)
    lines = [*SENTENCES, "", "   "]
    lengths = np.array([len(ids) + 1 for ids in two.src_tokenizer.encode(SENTENCES)])
    for budget in (10000, 300 * beam, 100 * beam):
        balanced = call_budget(two, lines, Decoding(beam_size=beam), budget)
        before = length_batches(lengths, budget // beam)
        after = length_batches(lengths, balanced // beam)
        # no more batches than the next round of 2 workers needs; each within the budget
        assert balanced <= budget and len(after) <= len(before) + len(before) % 2
        assert max(len(b) * lengths[b].max() for b in after) <= balanced // beam
        if budget == 10000:  # all lines fit in one batch: two halves instead
            assert len(before) == 1 and len(after) == 2
    # The translations do not depend on the cut.
    decoding = Decoding(beam_size=beam)
    assert [t.texts for t in two.translate(lines, decoding, batch_tokens=balanced)] == \
        [t.texts for t in two.translate(lines, decoding)]


def test_concurrent_requests_get_what_the_translator_gives(server, translator):
    settings = [{}, {"beam_size": 1}, {"beam_size": 3, "n_best": 2}, {"attention": True},
                {"beam_size": 4, "alpha": 1.0}, {"sampling": True, "seed": 3, "top_k": 4},
                {"beam_size": 3, "shortlist": True}]
    requests = [{"text": SENTENCES[i % 20: i % 20 + 1 + i % 4] + [""] * (i % 3 == 0),
                 **settings[i % len(settings)]} for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: server.call("POST", "/translate", r), requests))
    for request, (status, body) in zip(requests, answers, strict=True):
        assert status == 200, body
        assert_same(served(body), expected(translator, request["text"], request))


def test_outputs_equal_translate_py(server, translator, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(s + "\n" for s in SENTENCES[:8]))
    translate_file(translator, str(src), str(tmp_path / "out.txt"), Decoding(beam_size=5),
                   10000, 2000, progress=False)
    status, body = server.call("POST", "/translate", {"text": SENTENCES[:8]})
    assert status == 200
    assert [t["text"] + "\n" for t in body["translations"]] == \
        (tmp_path / "out.txt").read_text().splitlines(True)


def test_the_response_holds_pieces_scores_and_attention(server, translator):
    lines = [SENTENCES[0], "", "  "]
    status, body = server.call("POST", "/translate",
                               {"text": lines, "beam_size": 3, "n_best": 2, "attention": True})
    assert status == 200
    first, empty, blank = body["translations"]
    [tr] = translator.translate([SENTENCES[0]], Decoding(beam_size=3, n_best=2), attention=True)
    assert first["text"] == tr.text and first["score"] == pytest.approx(tr.hypotheses[0].score,
                                                                        abs=1e-4)
    assert len(first["hypotheses"]) == 2 and first["hypotheses"][0]["text"] == first["text"]
    assert first["source_pieces"] == tr.source_pieces[:-1]  # without the EOS
    assert first["target_pieces"] == translator.tgt_tokenizer.pieces(tr.hypotheses[0].tokens)
    attention = np.array(first["attention"])
    assert attention.shape == (len(first["target_pieces"]) + 1, len(first["source_pieces"]) + 1)
    assert attention.sum(axis=1) == pytest.approx(1.0, abs=1e-3)
    assert attention == pytest.approx(tr.hypotheses[0].attention.numpy(), abs=1e-4)
    for item in (empty, blank):
        assert item["text"] == "" and item["source_pieces"] == item["target_pieces"] == []
        assert len(item["hypotheses"]) == 2 and item["attention"] == []
    status, body = server.call("POST", "/translate", {"text": [SENTENCES[0]]})
    assert "attention" not in body["translations"][0] and not body["translations"][0]["truncated"]


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    ([1, 2], 422, "the body: Input should be an object"),
    ({"text": "A dog runs."}, 422, "text: Input should be a valid array"),
    ({"text": [1]}, 422, "text.0: Input should be a valid string"),
    ({"text": ["a"], "beam_size": "5"}, 422, "beam_size: Input should be a valid integer"),
    ({"text": ["a"], "attention": "yes"}, 422, "attention: Input should be a valid boolean"),
    ({"beam_size": 2}, 422, "text: Field required"),
    ({"text": []}, 422, "text: an empty list"),
    ({"text": ["a"] * 9}, 422, "text: 9 lines; this server takes at most 8"),
    ({"text": ["a", "b" * 201]}, 422, "text.1: 201 characters; this server takes at most 200"),
    ({"text": ["a"], "beam": 3}, 422, "beam: unknown key; valid keys: beam_size,"),
    ({"text": ["a"], "beam_size": 0}, 422, "beam_size must be >= 1, got 0"),
    ({"text": ["a"], "beam_size": 2, "n_best": 3}, 422, "n_best must be between 1 and"),
    ({"text": ["a"], "beam_size": 7}, 422, "beam_size 7 is over this server's limit (6)"),
    ({"text": ["a"], "max_len_a": 5.0}, 422, "this server's limit is 512"),
    ({"text": ["a"], "temperature": 0}, 422, "temperature must be > 0"),
    ({"text": ["a"], "max_len": 99999999999999999999999}, 422, "max_len is out of range"),
])
def test_bad_requests_get_one_line_json_errors(server, body, status, message):
    got, answer = server.call("POST", "/translate", body, {"Content-Type": "application/json"})
    assert got == status, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"]
    assert message in answer["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    # Headers only: the server answers without waiting for the 10 MB it was promised.
    conn.putrequest("POST", "/translate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(10_000_000))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert "at most 20000" in json.loads(response.read())["error"]
    conn.close()
    # Chunked: no length declared; refused once the chunks pass the limit.
    chunks = (b'{"text": ["' + b"a" * 4000 for _ in range(10))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    with contextlib.suppress(OSError):  # the server may close before the last chunk
        conn.request("POST", "/translate", chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert "over 20000 bytes" in json.loads(response.read())["error"]
    conn.close()
    assert server.call("POST", "/translate", {"text": ["a"]})[0] == 200  # still serving


def test_other_endpoints(server):
    assert server.call("GET", "/health") == (200, "ok")
    status, info = server.call("GET", "/info")
    assert status == 200 and info["translate"] and info["caption"]
    assert info["limits"]["max_lines"] == 8 and info["decoding"]["beam_size"] == 5
    assert info["model"]["src_vocab_size"] == 64 and info["caption_model"]["grid"] == [2, 2]
    status, schema = server.call("GET", "/openapi.json")
    fields = schema["components"]["schemas"]["TranslateRequest"]["properties"]
    assert {"text", "beam_size", "n_best", "attention"} <= set(fields)
    assert server.call("GET", "/docs")[0] == 200
    assert server.call("GET", "/") == (200, "<!doctype html><title>demo</title>")
    assert server.call("GET", "/static/app.js") == (200, "console.log('demo');")
    for path in ("/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/none.js",
                 "/nothing"):
        status, body = server.call("GET", path)
        assert status == 404 and set(body) == {"error"}, path
    status, body = server.call("GET", "/translate")
    assert status == 405 and set(body) == {"error"}


# --- captions --------------------------------------------------------------------------------


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_caption_an_image(server, caption_checkpoint):
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = base64.b64encode(png_of(pixels)).decode()
    captioner = Captioner.from_checkpoint(caption_checkpoint)
    [want] = captioner.caption([pixels], Decoding(beam_size=2, max_len=6), attention=True)
    for sent in (image, "data:image/png;base64," + image):
        status, got = server.call("POST", "/caption", {"image": sent, "beam_size": 2,
                                                       "max_len": 6, "attention": True})
        assert status == 200, got
        assert got["caption"] == want.text and got["grid"] == [2, 2]
        assert got["score"] == pytest.approx(want.hypotheses[0].score, abs=1e-4)
        assert len(got["words"]) == len(want.hypotheses[0].tokens)
        assert np.array(got["attention"]).shape == (len(got["words"]) + 1, 4)
    status, got = server.call("POST", "/caption", {"image": image})
    assert status == 200 and "attention" not in got


@pytest.mark.parametrize(("body", "message"), [
    ({"image": base64.b64encode(b"not an image").decode()}, "image: not a readable image"),
    ({"image": "%%% not base64"}, "image: not valid base64"),
    ({"image": "data:image/png,abc"}, "a data: URL must be base64"),
    ({"image": "", "beam_size": 2}, "image: empty"),
    ({"picture": "abc"}, "picture: unknown key"),
    ({"image": "aGVsbG8=", "shortlist": True}, "shortlist: this model has no lexical"),
])
def test_bad_images_get_one_line_json_errors(server, body, message):
    status, answer = server.call("POST", "/caption", body)
    assert status == 422 and set(answer) == {"error"} and message in answer["error"], answer


# --- startup and shutdown --------------------------------------------------------------------


def test_sigterm_finishes_requests_in_flight_then_exits_0(checkpoint, translator, tmp_path):
    late = Server(tmp_path, f"checkpoint={checkpoint}", f"static_dir={tmp_path / 'none'}")
    try:
        assert late.call("GET", "/")[0] == 404  # no demo page in static_dir
        status, body = late.call("POST", "/caption", {"image": "abc"})
        assert status == 404 and "caption_checkpoint" in body["error"]
        # In flight: the server has the request's headers and half of its body.
        body = json.dumps({"text": SENTENCES[:3], "beam_size": 2}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", late.port, timeout=60)
        conn.putrequest("POST", "/translate")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body[:10])
        time.sleep(1.0)
        late.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while late.call("GET", "/health")[0] != 0:  # new connections: refused, soon
            assert time.monotonic() < deadline, "still accepting connections"
            time.sleep(0.1)
        conn.send(body[10:])
        response = conn.getresponse()
        assert response.status == 200
        assert_same(served(json.loads(response.read())),
                    expected(translator, SENTENCES[:3], {"beam_size": 2}))
        assert late.process.wait(timeout=60) == 0, late.log.read_text()
    finally:
        late.stop()


@pytest.mark.parametrize("problem", ["missing checkpoint", "port in use"])
def test_startup_errors_are_one_line(problem, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1] if problem == "port in use" else free_port()
        result = subprocess.run([sys.executable, str(ROOT / "serve.py"),
                                 f"checkpoint={tmp_path / 'none.ckpt'}", f"port={port}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    message = {"missing checkpoint": "none.ckpt: checkpoint not found",
               "port in use": f"cannot listen on 127.0.0.1:{port}"}[problem]
    assert line.startswith("error: ") and message in line

"""The demo page (nmt/serving/static) in a real headless Chromium, driven by Playwright,
against the real server (serve.py in a subprocess) on a toy model: what a person sees is
the Translator's output, and the heatmap is its attention.

Debian's Chromium is used (``make browser`` installs it). Without it the tests skip, unless
NMT_REQUIRE_BROWSER=1 (``make test`` sets it): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import test_serve
from conftest import toy_pairs
from test_serve import Server
from train_helpers import ROOT

from nmt.decoding.options import Decoding
from nmt.inference.translator import Translator

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's package
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
SENTENCES = [s for s, _ in toy_pairs(3, seed=11)]
# The toy translator and the tiny untrained captioner of tests/test_serve.py (seconds to make).
checkpoint = test_serve.checkpoint
caption_checkpoint = test_serve.caption_checkpoint
WAIT_MS = 60_000  # a busy 2-core machine decodes slowly; the page itself answers at once


def missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (make browser installs Debian's chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    problem = missing_browser()
    if problem:
        if os.environ.get("NMT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"NMT_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(checkpoint, caption_checkpoint, tmp_path_factory) -> Iterator[str]:
    """serve.py with the toy translator and the tiny captioner of tests/test_serve.py: the
    page's base URL."""
    running = Server(tmp_path_factory.mktemp("demo-page"), f"checkpoint={checkpoint}",
                     f"caption_checkpoint={caption_checkpoint}")
    yield f"http://127.0.0.1:{running.port}/"
    assert running.stop() == 0, running.log.read_text()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def translate_on_page(page, text: str, beam: str) -> None:
    page.fill("#source", text)
    page.select_option("#beam", beam)
    page.click("#translate")
    # Attached, not visible: after an error the list is empty.
    page.wait_for_selector("#output[data-state=done], #output[data-state=error]",
                           state="attached", timeout=WAIT_MS)


# --- translation ----------------------------------------------------------------------------


def test_page_shows_the_translators_output_and_its_attention(page, checkpoint):
    # Two sentences around an empty line, and the final newline a paste brings.
    translate_on_page(page, f"{SENTENCES[0]}\n\n{SENTENCES[1]}\n", beam="3")
    assert page.get_attribute("#output", "data-state") == "done"
    assert page.is_hidden("#error")
    translator = Translator.from_checkpoint(checkpoint)
    inputs = [SENTENCES[0], "", SENTENCES[1]]
    expected = translator.translate(inputs, Decoding(beam_size=3), attention=True)
    items = page.query_selector_all("#output li.result")
    assert len(items) == 3
    shown = [item.query_selector(".translation").inner_text() for item in items]
    assert shown == [expected[0].text, "(empty line)", expected[2].text]
    assert expected[0].text and expected[2].text
    for i in (0, 2):
        score = float(items[i].query_selector(".score").get_attribute("data-score"))
        assert score == pytest.approx(expected[i].hypotheses[0].score, abs=1e-4)
    # An empty line keeps its place, with no score and no heatmap.
    assert items[1].query_selector(".score, table.heatmap") is None

    for i in (0, 2):
        best = expected[i].hypotheses[0]
        # The table as the page drew it, read in one call (not one round trip per cell).
        shown = page.evaluate(HEATMAP_JS, f"#heatmap-{i}")
        assert shown is not None, f"no heatmap for line {i}"
        weights = np.array(shown["weights"], dtype=float)
        # Rows: target pieces + EOS; columns: source pieces + EOS, as the Translator gives them.
        assert weights.shape == tuple(best.attention.shape)
        np.testing.assert_allclose(weights, best.attention.numpy(), atol=1e-4)  # 4 decimals sent
        assert shown["cols"] == expected[i].source_pieces
        assert shown["rows"] == [*translator.tgt_tokenizer.pieces(best.tokens), "</s>"]
        # Rendered: every row's strongest cell is coloured (white is a weight of 0).
        assert len(shown["strongest"]) == len(weights)
        assert all(c not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)") for c in shown["strongest"])


HEATMAP_JS = """selector => {
  const table = document.querySelector(selector);
  if (!table) return null;
  const body = [...table.tBodies[0].rows];
  const cells = body.map(r => [...r.cells].slice(1));
  return {
    cols: [...table.tHead.rows[0].cells].slice(1).map(th => th.textContent),
    rows: body.map(r => r.cells[0].textContent),
    weights: cells.map(row => row.map(td => Number(td.dataset.weight))),
    strongest: cells.map(row => getComputedStyle(row.reduce(
      (a, b) => Number(a.dataset.weight) >= Number(b.dataset.weight) ? a : b)).backgroundColor),
  };
}"""


def test_beam_size_changes_the_request(page, checkpoint):
    translate_on_page(page, SENTENCES[2], beam="1")
    translator = Translator.from_checkpoint(checkpoint)
    [greedy] = translator.translate([SENTENCES[2]], Decoding(beam_size=1))
    assert page.inner_text("#output li .translation") == greedy.text
    score = float(page.get_attribute("#output li .score", "data-score"))
    assert score == pytest.approx(greedy.hypotheses[0].score, abs=1e-4)


def test_api_errors_show_as_one_line(page):
    translate_on_page(page, SENTENCES[0], beam="1")
    assert page.get_attribute("#output", "data-state") == "done"
    # A beam size the select does not offer: the server refuses it (4xx) and the page says
    # why in one line, and drops the results of the text before.
    page.evaluate("document.querySelector('#beam').add(new Option('0', '0'))")
    translate_on_page(page, SENTENCES[1], beam="0")
    assert page.get_attribute("#output", "data-state") == "error"
    assert page.query_selector_all("#output li") == []
    message = page.inner_text("#error")
    assert page.is_visible("#error") and "beam_size" in message and "\n" not in message
    # Nothing typed: said on the page, nothing sent.
    page.fill("#source", "  \n")
    page.click("#translate")
    assert page.inner_text("#error") == "Type a sentence first (one per line)."


def test_caption_panel_only_with_a_caption_model(browser, server):
    info = get_json(server + "info")
    assert info["caption"] is True
    context = browser.new_context()
    page = context.new_page()
    # The same server, as /info would describe it without caption_checkpoint.
    page.route("**/info", lambda route: route.fulfill(json={**info, "caption": False}))
    page.goto(server)
    page.wait_for_selector("body[data-ready=true]", timeout=WAIT_MS)
    assert page.is_hidden("#caption-panel") and page.is_visible("#translate-panel")
    assert page.inner_text("#model-info").startswith("Serving translation.")
    context.close()


def test_page_uses_no_external_urls():
    static = ROOT / "nmt" / "serving" / "static"
    for path in static.iterdir():
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


# --- captioning -----------------------------------------------------------------------------


def test_page_captions_an_image_with_attention_panels(page, caption_checkpoint, tmp_path):
    from PIL import Image, ImageDraw

    from nmt.inference.captioner import Captioner

    # Wider than tall: the model sees the centre square, and so do the panels.
    image = Image.new("RGB", (48, 32), "black")
    ImageDraw.Draw(image).ellipse((14, 6, 30, 22), fill=(230, 30, 30))
    image.save(tmp_path / "circle.png")
    assert page.is_visible("#caption-panel")
    page.select_option("#caption-beam", "2")
    page.set_input_files("#image", str(tmp_path / "circle.png"))
    page.wait_for_selector("#caption-output[data-state=done], #caption-output[data-state=error]",
                           state="attached", timeout=WAIT_MS)
    assert page.is_hidden("#error"), page.inner_text("#error")
    captioner = Captioner.from_checkpoint(caption_checkpoint)
    # The server's caption decoding (conf/serve.yaml caption_decoding) with the page's beam.
    [want] = captioner.caption([image], Decoding(beam_size=2, max_len=30), attention=True)
    assert page.inner_text("#caption") == want.text
    best = want.hypotheses[0]
    assert float(page.inner_text("#caption-score")) == pytest.approx(best.score, abs=1e-3)
    # One panel per word and one for the EOS, each the image with the grid drawn over it.
    labels = [f.inner_text() for f in page.query_selector_all("#caption-attention figcaption")]
    words = [p.removeprefix("▁") for p in captioner.tokenizer.pieces(best.tokens)]
    assert labels == [*words, "</s>"]
    drawn = page.eval_on_selector_all("#caption-attention canvas", """canvases =>
        canvases.map(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
          const seen = new Set(); for (let i = 0; i < d.data.length; i += 4)
            seen.add(d.data[i] << 16 | d.data[i + 1] << 8 | d.data[i + 2]);
          return seen.size; })""")
    assert len(drawn) == len(labels) and all(colours > 4 for colours in drawn)

    # A dropped file that is no image: the server's one-line refusal, on the page.
    dropped = page.evaluate_handle("""() => { const dt = new DataTransfer();
        dt.items.add(new File(['not an image'], 'notes.txt', {type: 'text/plain'}));
        return dt; }""")
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    page.wait_for_selector("#caption-output[data-state=error]", state="attached",
                           timeout=WAIT_MS)
    message = page.inner_text("#error")
    assert page.is_visible("#error") and "not a readable image" in message and "\n" not in message

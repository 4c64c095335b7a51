"""The tour (notebooks/tour.py, its text; notebooks/tour.ipynb, the same cells with their
outputs, rendered where the repository is browsed): executed top to bottom, and the two
files kept in step."""

from __future__ import annotations

import os
import time

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient
from train_helpers import ROOT

TEXT = ROOT / "notebooks" / "tour.py"
RENDERED = ROOT / "notebooks" / "tour.ipynb"


def cells(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


def images(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_the_rendered_notebook_is_the_text_with_outputs():
    text, rendered = jupytext.read(TEXT), nbformat.read(RENDERED, as_version=4)
    assert cells(rendered) == cells(text), "notebooks/tour.ipynb is stale: run make notebook"
    assert images(rendered) >= 6  # curves, attention, cells, 2 gradient figures, caption
    errors = [o for cell in rendered.cells if cell.cell_type == "code" for o in cell.outputs
              if o.output_type == "error"]
    assert not errors


@pytest.mark.slow
def test_the_tour_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("TOUR_DIR", str(tmp_path / "tour"))
    notebook = jupytext.read(TEXT)
    start = time.perf_counter()
    # A failing cell raises CellExecutionError with its traceback.
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    minutes = (time.perf_counter() - start) / 60
    print(f"tour: {minutes:.2f} minutes")  # reported, not asserted (docs/tour numbers)
    assert images(notebook) >= 6
    printed = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.outputs if o.output_type == "stream")
    assert "dev BLEU (greedy" in printed and "beam 5: BLEU" in printed
    assert printed.count("first/last gradient norm") == 6
    assert (tmp_path / "tour" / "model" / "gradients.json").is_file()
    assert os.path.isfile(tmp_path / "tour" / "caption-attention.png")

"""Run notebooks/tour.py top to bottom and write notebooks/tour.ipynb, the same cells with
their outputs (``make notebook``; tests/test_notebook.py checks the two stay in step).

    python notebooks/render.py [--output notebooks/tour.ipynb]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE / "tour.ipynb")
    args = parser.parse_args()
    notebook = jupytext.read(HERE / "tour.py")
    start = time.perf_counter()
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(notebook, args.output)
    print(f"{args.output}: executed in {(time.perf_counter() - start) / 60:.2f} minutes")


if __name__ == "__main__":
    main()

"""The house rules of docs/contributing.md that a reader cannot see at a glance: no file
in nmt/ over 350 lines, no function over 60, and every package says what it holds and
what it may import (the import layers themselves: `make layers`)."""

from __future__ import annotations

import ast
from pathlib import Path

NMT = Path(__file__).resolve().parents[1] / "nmt"
LAYERS = ("cli", "serving", "inference", "training", "export", "decoding", "model", "data",
          "core")


def test_no_file_over_350_lines():
    long = {str(p.relative_to(NMT)): n for p in NMT.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long


def test_no_function_over_60_lines():
    long = [f"{p.relative_to(NMT)}:{f.lineno} {f.name} ({f.end_lineno - f.lineno + 1})"
            for p in NMT.rglob("*.py") for f in ast.walk(ast.parse(p.read_text()))
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
            and f.end_lineno - f.lineno + 1 > 60]
    assert not long


def test_every_package_is_a_layer_with_a_docstring():
    packages = {p.parent.name for p in NMT.glob("*/__init__.py")}
    assert packages == set(LAYERS)
    assert not [p.name for p in NMT.glob("*.py") if p.name != "__init__.py"]  # no loose modules
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((NMT / name / "__init__.py").read_text()))
        assert doc and "import" in doc, name  # says what it may import

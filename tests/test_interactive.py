"""Interactive translation (nmt/inference/interactive.py): translate.py on a terminal, driven
through a pseudo-terminal, and the line loop in-process."""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_side
from omegaconf import OmegaConf
from test_translate import SENTENCES, checkpoint, run_cli, translator  # noqa: F401  (fixtures)
from train_helpers import ROOT

from nmt.core.errors import ConfigError
from nmt.decoding.options import Decoding
from nmt.inference import interactive
from nmt.inference.translate import format_translation
from nmt.inference.translate import run as translate_run


class Terminal:
    """translate.py with a pseudo-terminal on stdin and stdout (echo off, so that what is
    read back is the program's output only) and stderr in a file."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.stderr = cwd / "stderr.txt"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "translate.py"), *args],
                                         stdin=slave, stdout=slave, stderr=err, cwd=cwd)
        os.close(slave)
        self.pending = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_line(self, timeout: float = 120) -> str:
        """The next line the program writes (the terminal turns its "\\n" into "\\r\\n")."""
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"no output in {timeout} s; stderr: {self.stderr.read_text()}"
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the program closed the terminal
                data = b""
            assert data, f"translate.py ended early; stderr: {self.stderr.read_text()}"
            self.pending += data
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode().rstrip("\r")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@contextlib.contextmanager
def terminal(ckpt: Path, cwd: Path, *args: str) -> Iterator[Terminal]:
    term = Terminal([f"checkpoint={ckpt}", "progress=false", *args], cwd)
    try:
        yield term
    finally:
        term.close()


def test_a_terminal_gets_each_translation_before_the_next_line(checkpoint, tmp_path):  # noqa: F811
    lines = SENTENCES[:3]
    inp = write_side(tmp_path / "in.en", lines)
    batched = run_cli("translate.py", f"checkpoint={checkpoint}", f"input={inp}",
                      f"output={tmp_path / 'out.de'}", "progress=false", cwd=tmp_path)
    assert batched.returncode == 0, batched.stderr
    expected = (tmp_path / "out.de").read_text().splitlines()
    assert len(expected) == 3 and all(expected)
    with terminal(checkpoint, tmp_path) as term:  # interactive: stdin is a terminal
        got = []
        for line in lines:
            term.send(line.encode() + b"\n")
            got.append(term.read_line())  # before the next line is typed
        term.send(b"\x04")  # Ctrl-D
        assert term.proc.wait(timeout=60) == 0
        assert term.pending == b""
    assert got == expected
    stderr = term.stderr.read_text()
    # a prompt before each line and before Ctrl-D, then a newline for the shell's prompt
    assert interactive.PROMPT * 4 + "\n" in stderr and "Traceback" not in stderr


@pytest.mark.skipif(signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                    reason="SIGINT is ignored here (a background job), and so in translate.py")
def test_ctrl_c_ends_the_session_quietly(checkpoint, tmp_path, translator):  # noqa: F811
    with terminal(checkpoint, tmp_path, "decoding=greedy") as term:
        term.send(SENTENCES[0].encode() + b"\n")
        assert term.read_line() == translator.translate_text(SENTENCES[:1],
                                                             Decoding(beam_size=1))[0]
        term.proc.send_signal(signal.SIGINT)  # what Ctrl-C on the terminal sends
        assert term.proc.wait(timeout=60) == 0
    assert "Traceback" not in term.stderr.read_text()


def loop(model, text: bytes, decoding: Decoding, **kwargs) -> tuple[str, int]:
    out = io.StringIO()
    n = interactive.translate_lines(model, io.BytesIO(text), out, decoding,
                                    batch_tokens=10000, **kwargs)
    return out.getvalue(), n


def test_each_line_gives_what_the_batched_run_gives(translator):  # noqa: F811
    lines = [SENTENCES[3], "", SENTENCES[4], "  "]
    text = "".join(line + "\n" for line in lines).encode()
    for decoding in (Decoding(beam_size=3), Decoding(beam_size=4, n_best=3)):
        batched = translator.translate(lines, decoding)
        out, n = loop(translator, text, decoding)
        assert n == 4
        assert out == "".join(format_translation(i, tr, decoding.n_best)
                              for i, tr in enumerate(batched))


def test_pieces_follow_each_translation(translator):  # noqa: F811
    decoding = Decoding(beam_size=3, n_best=2)
    out, _ = loop(translator, f"{SENTENCES[5]}\n\n".encode(), decoding, show_pieces=True)
    [tr] = translator.translate([SENTENCES[5]], decoding)
    src = translator.src_tokenizer
    pieces = src.pieces(src.encode([SENTENCES[5]])[0])
    target = [translator.tgt_tokenizer.pieces(h.tokens) for h in tr.hypotheses]
    assert out.splitlines()[2:] == [
        f"  source pieces: {' '.join(pieces)}",
        f"  target pieces 1: {' '.join(target[0])}",
        f"  target pieces 2: {' '.join(target[1])}",
        "1 |||  ||| 0.0000", "1 |||  ||| 0.0000"]  # an empty line: no pieces


def test_invalid_utf8_line_gets_an_empty_translation_and_the_session_goes_on(
        translator, capsys):  # noqa: F811
    decoding = Decoding(beam_size=2)
    out, n = loop(translator, b"schl\xf6ssel\n" + SENTENCES[0].encode() + b"\n", decoding,
                  prompt=sys.stderr)
    assert n == 2
    assert out == "\n" + translator.translate_text(SENTENCES[:1], decoding)[0] + "\n"
    err = capsys.readouterr().err
    assert "error: <stdin>, line 1: invalid UTF-8" in err
    assert err.count(interactive.PROMPT) == 3 and err.endswith("\n")


def test_ctrl_c_in_the_loop_returns_what_was_done(translator):  # noqa: F811
    class Interrupted(io.BytesIO):
        def readline(self, size: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise KeyboardInterrupt
            return super().readline()

    out = io.StringIO()
    n = interactive.translate_lines(translator, Interrupted(b"x\ny\n"), out, Decoding(),
                                    batch_tokens=10000)
    assert n == 1 and out.getvalue().count("\n") == 1


def config(**values):
    base = {"mode": "translate", "input": "-", "output": "-", "interactive": None}
    return OmegaConf.create({**base, **values})


def test_interactive_is_chosen_on_a_terminal_or_on_request(monkeypatch):
    class Stdin:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(sys, "stdin", Stdin(True))
    assert interactive.wanted(config())
    assert not interactive.wanted(config(interactive=False))
    assert not interactive.wanted(config(output="out.de"))
    assert not interactive.wanted(config(input="in.en"))
    assert not interactive.wanted(config(mode="score"))
    monkeypatch.setattr(sys, "stdin", Stdin(False))
    assert not interactive.wanted(config())
    assert interactive.wanted(config(interactive=True))


@pytest.mark.parametrize(("values", "message"), [
    ({"interactive": True, "input": "in.en"}, "interactive=true reads stdin and writes stdout"),
    ({"interactive": True, "output": ["a", "b"]}, "use it with input=- output=-"),
    ({"interactive": "yes"}, "interactive must be true, false or null"),
])
def test_interactive_mistakes(values, message):
    with pytest.raises(ConfigError, match=message):
        interactive.wanted(config(**values))


def test_show_pieces_is_refused_in_batched_translation(tmp_path):
    inp = write_side(tmp_path / "in.en", ["A dog ."])
    cfg = config(input=str(inp), reference=None, show_pieces=True)
    with pytest.raises(ConfigError, match="show_pieces=true is for interactive translation"):
        translate_run(cfg)

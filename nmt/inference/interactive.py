"""Interactive translation: each line translated as soon as it is entered, the model kept
loaded between lines.

    python translate.py checkpoint=model.ckpt          # stdin a terminal: interactive
    python translate.py checkpoint=model.ckpt interactive=true show_pieces=true

translate.py runs this loop when ``interactive=true``, or (``interactive=null``, the
default) when stdin is a terminal and both input and output are ``-``; piped input keeps
the batched translation of nmt/inference/translate.py. Each line's output is what the
batched run writes for it (one line, or with ``decoding.n_best`` > 1 its n-best lines in
Moses format, numbered from 0), written and flushed before the next line is read. On a
terminal a prompt ``> `` goes to stderr, so stdout holds translations only. With
``show_pieces``, the source pieces and each hypothesis' target pieces follow, indented.
End of input (Ctrl-D) or an interrupt (Ctrl-C) ends the loop quietly, exit status 0.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any, BinaryIO

from nmt.core.errors import ConfigError, DataError
from nmt.data.corpus import decode_line
from nmt.decoding.options import Decoding
from nmt.inference.options import as_list
from nmt.inference.translate import format_translation, load_translator
from nmt.inference.translator import Translation, Translator

log = logging.getLogger(__name__)

PROMPT = "> "


def wanted(cfg: Any) -> bool:
    """Whether translate.py should run interactively: ``interactive`` if true or false;
    if null, when stdin is a terminal and the config translates stdin to stdout."""
    flag = cfg.get("interactive")
    stdio = (cfg.get("mode", "translate") == "translate" and as_list(cfg.input) == ["-"]
             and as_list(cfg.output) == ["-"])
    if flag is None:
        return stdio and sys.stdin is not None and sys.stdin.isatty()
    if not isinstance(flag, bool):
        raise ConfigError(f"interactive must be true, false or null (null: on a terminal), "
                          f"got {flag!r}")
    if flag and not stdio:
        raise ConfigError("interactive=true reads stdin and writes stdout: use it with "
                          "input=- output=- (the defaults) and mode=translate")
    return flag


def run(cfg: Any) -> dict[str, int]:
    """Load the config's model, then translate stdin line by line until it ends or
    Ctrl-C; return the lines translated."""
    prompt = sys.stderr if sys.stdin.isatty() else None
    try:
        translator, decoding = load_translator(cfg)
    except KeyboardInterrupt:  # Ctrl-C while the model loads: no traceback either
        print(file=sys.stderr)
        return {"-": 0}
    n = translate_lines(translator, sys.stdin.buffer, sys.stdout, decoding,
                        batch_tokens=cfg.batch_tokens, show_pieces=cfg.get("show_pieces", False),
                        prompt=prompt)
    log.info("<stdin>: %d line(s) translated", n)
    return {"-": n}


def translate_lines(translator: Translator, lines: BinaryIO, out: IO[str], decoding: Decoding,
                    *, batch_tokens: int, show_pieces: bool = False,
                    prompt: IO[str] | None = None) -> int:
    """Read ``lines`` one at a time, write each one's translation to ``out`` and flush;
    return how many were translated. ``prompt``: where ``> `` goes before each line (a
    terminal's stderr), or None. An invalid UTF-8 line gets a message on stderr and an
    empty translation, so the output stays line-aligned."""
    n = 0
    try:
        while True:
            if prompt is not None:
                prompt.write(PROMPT)
                prompt.flush()
            raw = lines.readline()
            if not raw:  # end of input: Ctrl-D on a terminal
                break
            n += 1
            try:
                line = decode_line(raw, "<stdin>", n)
            except DataError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
                line = ""
            [tr] = translator.translate([line], decoding, batch_tokens=batch_tokens)
            if tr.truncated:
                log.warning("<stdin>, line %d: longer than %d pieces; its first %d were "
                            "translated", n, translator.max_src_len, translator.max_src_len)
            out.write(format_translation(n - 1, tr, decoding.n_best))
            if show_pieces and line.strip():
                out.write(format_pieces(translator, tr))
            out.flush()
    except KeyboardInterrupt:  # Ctrl-C: end the session, no traceback
        pass
    if prompt is not None:
        prompt.write("\n")  # the shell's prompt then starts on a line of its own
        prompt.flush()
    return n


def format_pieces(translator: Translator, tr: Translation) -> str:
    """The source pieces (as translated: cut to max_src_len) and the target pieces of
    each hypothesis, one indented line each; numbered when there are several."""
    src = translator.src_tokenizer
    ids = src.encode([tr.source])[0][: translator.max_src_len]
    text = f"  source pieces: {' '.join(src.pieces(ids))}\n"
    several = len(tr.hypotheses) > 1
    for k, hyp in enumerate(tr.hypotheses, start=1):
        label = f"target pieces {k}" if several else "target pieces"
        text += f"  {label}: {' '.join(translator.tgt_tokenizer.pieces(hyp.tokens))}\n"
    return text

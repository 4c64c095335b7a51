"""Command-line entry points: compose a Hydra config, call one function, report user errors.

The root scripts (train.py, translate.py, evaluate.py, caption.py, average.py, serve.py) and the
console scripts in pyproject.toml all land here.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from nmt.cli.config import CONF_DIR, check_overrides
from nmt.core.errors import ConfigError, NMTError

log = logging.getLogger("nmt")


def report_errors(fn: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Turn an NMTError into a one-line message and exit status 2, no traceback."""

    def wrapper(cfg: DictConfig) -> Any:
        try:
            return fn(cfg)
        except NMTError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except MissingMandatoryValue as e:  # a ??? value the command line did not set
            print(f"error: {e.full_key} is not set; give it on the command line "
                  f"({e.full_key}=...)", file=sys.stderr)
            sys.exit(2)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def as_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


@report_errors
def prepare(cfg: DictConfig) -> dict[str, Any]:
    """Fetch the data, train the tokenizers, encode every split; print a JSON summary."""
    from nmt.data.prepare import prepare as prepare_data
    from nmt.data.summary import describe

    if "format" in cfg.data:
        raise ConfigError(f"data={cfg.data.name}: captioning data is prepared by "
                          "train.py task=caption (its images at the model's size)")
    prepared = prepare_data(as_dict(cfg.data), as_dict(cfg.tokenizer))
    summary = describe(prepared, cfg.max_tokens)
    summary["timings_s"] = {k: round(v, 3) for k, v in prepared.timings.items()}
    print(json.dumps(summary, indent=1))
    return summary


@report_errors
def train(cfg: DictConfig) -> dict[str, float]:
    """Train as configured (conf/train.yaml); print the final metrics as JSON."""
    from nmt.training.checkpointing import Preempted
    from nmt.training.train import train as run_training

    try:
        metrics = run_training(cfg)
    except Preempted as e:
        print(f"{e}\nresume with: python train.py {resume_command(e.path)}", file=sys.stderr)
        sys.exit(128 + e.signum)  # the shell's convention for "ended by this signal"
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    return metrics


def resume_command(checkpoint: Path) -> str:
    """This command line's overrides, pointed at the run directory of ``checkpoint``."""
    kept = [a for a in sys.argv[1:] if not a.startswith(("run_dir=", "ckpt_path="))]
    return shlex.join([*kept, f"run_dir={checkpoint.parent.parent}", "ckpt_path=last"])


def run_hydra(config_name: str, fn: Callable[[DictConfig], Any]) -> None:
    """``fn`` under ``hydra.main``, after composing the command line's overrides once
    ourselves: a misspelt key, a wrong type or an unknown choice is then one line naming
    the valid ones (exit 2) instead of Hydra's report. Sweeps (-m) and Hydra's own flags
    go straight to Hydra."""
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):
        overrides = [a for a in args if not a.lstrip("+~").startswith("hydra.")]
        try:
            check_overrides(config_name, overrides)
        except NMTError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(fn)()


def train_main() -> None:
    run_hydra("train", train)


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes: the
    commands also run in-process (the Python API, tests), where stderr is swapped and
    a handler bound to the stream of the time would write to a closed file later."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def _log_to_stderr() -> None:
    # translate.py may write translations to stdout: everything else goes to stderr.
    logging.basicConfig(handlers=[_StderrHandler()], level=logging.INFO,
                        format="[%(asctime)s %(levelname)s] %(message)s", force=True)


@report_errors
def translate(cfg: DictConfig) -> dict[str, int]:
    """Translate files or stdin with a checkpoint (conf/translate.yaml); on a terminal
    (or with interactive=true), each line as it is entered."""
    _log_to_stderr()
    from nmt.inference import interactive
    from nmt.inference.translate import run

    return interactive.run(cfg) if interactive.wanted(cfg) else run(cfg)


@report_errors
def evaluate(cfg: DictConfig) -> list[dict[str, Any]]:
    """Translate test sets and score them with sacrebleu (conf/evaluate.yaml)."""
    _log_to_stderr()
    from nmt.inference.evaluate import run

    return run(cfg)


@report_errors
def caption(cfg: DictConfig) -> dict[str, int]:
    """Caption image files with a checkpoint (conf/caption.yaml)."""
    _log_to_stderr()
    from nmt.inference.caption import run

    return run(cfg)


def _print_summary(run: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig
                   ) -> dict[str, Any]:
    """Log to stderr, run a command that returns a summary, print it as JSON on stdout."""
    _log_to_stderr()
    summary = run(cfg)
    print(json.dumps(summary, indent=1))
    return summary


@report_errors
def average(cfg: DictConfig) -> dict[str, Any]:
    """Average the weights of checkpoints into one (conf/average.yaml); print a JSON summary."""
    from nmt.inference.average import run

    return _print_summary(run, cfg)


@report_errors
def export(cfg: DictConfig) -> dict[str, Any]:
    """Export a checkpoint to ONNX or int8 (conf/export.yaml); print a JSON summary."""
    from nmt.export.exporter import run

    return _print_summary(run, cfg)


@report_errors
def shortlist(cfg: DictConfig) -> dict[str, Any]:
    """Add a lexical shortlist table to a checkpoint (conf/shortlist.yaml); print a JSON
    summary."""
    from nmt.decoding.shortlist import run

    return _print_summary(run, cfg)


@report_errors
def curves(cfg: DictConfig) -> dict[str, Any]:
    """Overlay the training curves of runs in one figure (conf/curves.yaml)."""
    from nmt.training.curves import plot_runs

    def run(cfg: DictConfig) -> dict[str, Any]:
        runs = [cfg.runs] if isinstance(cfg.runs, str) else [str(r) for r in cfg.runs]
        return {"runs": runs, "output": str(plot_runs(runs, cfg.output))}

    return _print_summary(run, cfg)


@report_errors
def gradients(cfg: DictConfig) -> dict[str, Any]:
    """The gradient at each encoder state of checkpoints (conf/gradients.yaml); print a JSON
    summary."""
    from nmt.training.gradient_report import run

    return _print_summary(run, cfg)


@report_errors
def gettext(cfg: DictConfig) -> dict[str, Any]:
    """Build the gettext corpora from a machine's catalogs (conf/gettext.yaml); print a JSON
    summary."""
    from nmt.data.gettext import build

    def run(cfg: DictConfig) -> dict[str, Any]:
        packages = {key: None if cfg[key] is None else [str(p) for p in cfg[key]]
                    for key in ("dev_packages", "test_packages")}
        return build(cfg.output, cfg.locale_dir, [str(x) for x in cfg.languages], **packages)

    return _print_summary(run, cfg)


@report_errors
def serve(cfg: DictConfig) -> None:
    """Serve a model over HTTP until SIGTERM or SIGINT (conf/serve.yaml, docs/serving.md)."""
    _log_to_stderr()
    from nmt.serving.server import run

    run(cfg)


def serve_main() -> None:
    run_hydra("serve", serve)


def caption_main() -> None:
    run_hydra("caption", caption)


def translate_main() -> None:
    run_hydra("translate", translate)


def evaluate_main() -> None:
    run_hydra("evaluate", evaluate)


def prepare_main() -> None:
    run_hydra("prepare", prepare)


def average_main() -> None:
    run_hydra("average", average)


def export_main() -> None:
    run_hydra("export", export)


def shortlist_main() -> None:
    run_hydra("shortlist", shortlist)


def curves_main() -> None:
    run_hydra("curves", curves)


def gradients_main() -> None:
    run_hydra("gradients", gradients)


def gettext_main() -> None:
    run_hydra("gettext", gettext)


COMMANDS = {"prepare": prepare_main, "train": train_main, "translate": translate_main,
            "evaluate": evaluate_main, "caption": caption_main, "average": average_main,
            "export": export_main, "serve": serve_main, "shortlist": shortlist_main,
            "gettext": gettext_main, "curves": curves_main,
            "gradients": gradients_main}


def main() -> None:
    """python -m nmt.cli COMMAND [key=value ...]"""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m nmt.cli {{{','.join(COMMANDS)}}} [key=value ...]")
    name = sys.argv.pop(1)
    COMMANDS[name]()

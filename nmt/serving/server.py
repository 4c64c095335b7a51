"""serve.py: check the configuration and the models, then build and run the server.

Everything a user can get wrong at startup (a missing or broken checkpoint, a
captioning model given as the translation model, a port in use, a bad limit) is an
NMTError raised here, before any worker process starts: one line, exit status 2.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from torch import nn

from nmt.core.errors import ConfigError
from nmt.decoding.options import Decoding
from nmt.decoding.shortlist import missing_table
from nmt.inference.captioner import Captioner, no_shortlist
from nmt.inference.options import as_list, resolve_device, resolve_workers
from nmt.inference.translator import Translator
from nmt.serving.api import CaptionAPI, ModelSettings, TranslateAPI
from nmt.serving.app import STATIC_DIR, Check, Gate, NMTServer, listen_socket
from nmt.serving.requests import Limits, parse_caption, parse_translate

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Batching:
    """conf/serve.yaml ``batching``: how LitServe gathers requests, how they are decoded."""

    max_batch_size: int = 64
    batch_timeout: float = 0.2
    batch_gap: float = 0.02
    batch_tokens: int = 10000

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "batch_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"batching.{name} must be a positive integer, got {value!r}")
        for name in ("batch_timeout", "batch_gap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"batching.{name} must be a number of seconds >= 0, got "
                                  f"{value!r}")


def model_summary(translator: Translator, checkpoints: list[str]) -> dict[str, Any]:
    """What /info tells about the translation model."""
    model = translator.model
    summary: dict[str, Any] = {
        "checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
        "kind": type(model).__name__,
        "src_vocab_size": translator.src_tokenizer.vocab_size,
        "tgt_vocab_size": translator.tgt_tokenizer.vocab_size,
        "max_src_len": translator.max_src_len, "device": str(translator.device)}
    if isinstance(model, nn.Module):
        summary["parameters"] = sum(p.numel() for p in model.parameters())
    record = getattr(model, "record", None)
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        summary["config"] = record["config"]
    return summary


def _check_server(cfg: Any, batching: Batching) -> None:
    """The port, processes and timeouts, each refused in one line."""
    port = cfg.port
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(f"port must be a number from 1 to 65535, got {port!r}")
    if isinstance(cfg.processes, bool) or not isinstance(cfg.processes, int) or cfg.processes < 1:
        raise ConfigError(f"processes must be a positive integer, got {cfg.processes!r}")
    if not isinstance(cfg.timeout, int | float) or cfg.timeout <= 0:
        raise ConfigError(f"timeout must be a number of seconds > 0, got {cfg.timeout!r}")
    if batching.batch_timeout >= cfg.timeout:
        raise ConfigError(f"batching.batch_timeout ({batching.batch_timeout} s) must be less "
                          f"than timeout ({cfg.timeout} s), the longest a request may wait")


def run(cfg: Any) -> None:
    """serve.py (conf/serve.yaml): serve until SIGTERM or SIGINT."""
    limits = Limits(**dict(cfg.limits))
    batching = Batching(**dict(cfg.batching))
    decoding = Decoding.from_dict(dict(cfg.decoding))
    caption_decoding = no_shortlist(Decoding.from_dict(dict(cfg.caption_decoding),
                                                       "caption_decoding"))
    host, port = str(cfg.host), cfg.port
    _check_server(cfg, batching)
    listen_socket(host, port).close()  # a port in use: said now, not after loading models
    device = resolve_device(cfg.device)
    resolve_workers(cfg.workers, device)  # a bad value: one line here, not in the worker
    checkpoints = as_list(cfg.checkpoint)
    if not checkpoints:
        raise ConfigError("checkpoint: an empty list; give one checkpoint or several")
    # One path as a string (an exported model's folder is one), several as a list.
    source: str | list[str] = checkpoints[0] if len(checkpoints) == 1 else checkpoints
    # Loaded here once so that a missing or broken model is one line now; the inference
    # worker loads its own copy.
    translator = Translator.from_checkpoint(source, "cpu", cfg.max_src_len)
    shortlist = translator.shortlist is not None
    if decoding.shortlist and not shortlist:
        raise missing_table(translator.origin)
    info: dict[str, Any] = {"translate": True, "caption": cfg.caption_checkpoint is not None,
                            "limits": dataclasses.asdict(limits),
                            "batching": dataclasses.asdict(batching),
                            "decoding": dataclasses.asdict(decoding),
                            "model": model_summary(translator, checkpoints)}
    del translator
    settings = ModelSettings(source, device,
                             cfg.max_src_len, cfg.workers, cfg.processes,
                             batching.batch_tokens)
    apis: list[Any] = [TranslateAPI(settings, decoding, limits, batching.max_batch_size,
                                    batching.batch_timeout, batching.batch_gap)]
    checks: dict[str, Check] = {"/translate": lambda body: parse_translate(
        body, limits, decoding, cfg.max_src_len, shortlist)}
    if cfg.caption_checkpoint is not None:
        caption_path = str(cfg.caption_checkpoint)
        captioner = Captioner.from_checkpoint(caption_path, "cpu")
        cells = captioner.grid[0] * captioner.grid[1]
        info["caption_decoding"] = dataclasses.asdict(caption_decoding)
        info["caption_model"] = {"checkpoint": caption_path, "grid": list(captioner.grid),
                                 "image_size": captioner.settings.size,
                                 "vocab_size": captioner.tokenizer.vocab_size}
        del captioner
        apis.append(CaptionAPI(caption_path, device, caption_decoding, limits))
        checks["/caption"] = lambda body: parse_caption(body, limits, caption_decoding, cells)
    # LitServe's accelerator only names the device it hands setup(); ours is in settings.
    server = NMTServer(apis, accelerator="cpu", timeout=cfg.timeout,
                       workers_per_device=[cfg.processes] + [1] * (len(apis) - 1),
                       middlewares=[(Gate, {"max_body_bytes": limits.max_body_bytes,
                                            "checks": checks})])
    static_dir = Path(cfg.static_dir) if cfg.static_dir else STATIC_DIR
    server.add_routes(info, static_dir, caption=cfg.caption_checkpoint is not None)
    server.serve(host, port, str(cfg.log_level), graceful_s=cfg.timeout)

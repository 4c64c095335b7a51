"""What a request may hold: the JSON bodies of POST /translate and /caption, checked in the
HTTP process before anything is queued, with one-line reasons.

A body is parsed by its pydantic model in strict mode (no "5" for 5, no true for 1;
unknown keys refused), then held to the server's ``Limits``, and its decoding keys are
laid over the server's default ``Decoding`` and validated by ``Decoding`` itself, so a
request gets exactly the checks and messages of ``translate.py decoding.*=...``.
Everything refused raises ``RequestError`` with an HTTP status and one line.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nmt.core.errors import ConfigError
from nmt.decoding.options import Decoding

DECODING_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Decoding))


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (conf/serve.yaml ``limits``)."""

    max_lines: int = 64  # lines per /translate request
    max_chars: int = 1000  # characters per line
    max_body_bytes: int = 10_000_000  # request body, refused before it is read (413)
    max_beam_size: int = 16
    max_n_best: int = 16
    max_output_len: int = 512  # target tokens (EOS included) a request may let search reach

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limits.{f.name} must be a positive integer, got {value!r}")


class DecodingFields(BaseModel):
    """The keys of nmt.decoding.Decoding, each optional: a key left out takes the server's
    setting (conf/serve.yaml ``decoding``). Ranges are Decoding's and the server's limits."""

    model_config = ConfigDict(extra="forbid", strict=True)

    beam_size: int = Field(5, description="beam width; 1 with n_best 1 is greedy search")
    alpha: float = Field(0.6, description="GNMT length penalty exponent")
    max_len_a: float = Field(1.5, description="at most max_len_a * source length + max_len_b "
                                              "output tokens, EOS included")
    max_len_b: int = 10
    max_len: int | None = Field(None, description="a fixed cap on output tokens (EOS included)")
    min_len: int = 0
    n_best: int = Field(1, description="hypotheses returned per input, best first")
    sampling: bool = Field(False, description="ancestral sampling instead of search")
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 1
    shortlist: bool = Field(False, description="score only the target pieces the model's "
                                               "lexical shortlist allows for the source")


class TranslateRequest(DecodingFields):
    """POST /translate: lines of text, translated one by one, in order."""

    text: list[str] = Field(description="the lines to translate; empty strings give empty "
                                        "translations")
    attention: bool = Field(False, description="also return each best hypothesis' attention")


class CaptionRequest(DecodingFields):
    """POST /caption: one image, base64 (a data: URL prefix is allowed)."""

    image: str = Field(description="a PNG or JPEG image, base64-encoded")
    attention: bool = Field(False, description="also return the attention over the image")


def decoding_of(request: DecodingFields, defaults: Decoding, limits: Limits,
                max_src_len: int, shortlist: bool = False) -> Decoding:
    """The request's decoding keys over the server's ``defaults``, validated; refused
    (422) when Decoding refuses them or they pass the server's limits. ``max_src_len``:
    the longest source (pieces, EOS not counted) an output length limit applies to;
    ``shortlist``: whether the model has a lexical shortlist table."""
    given = request.model_dump(include=set(DECODING_KEYS), exclude_unset=True)
    try:
        decoding = Decoding.from_dict(given, "request", **dataclasses.asdict(defaults))
    except ConfigError as e:
        raise RequestError(422, str(e)) from None
    if decoding.shortlist and not shortlist:
        raise RequestError(422, "shortlist: this model has no lexical shortlist table")
    if decoding.beam_size > limits.max_beam_size:
        raise RequestError(422, f"beam_size {decoding.beam_size} is over this server's limit "
                                f"({limits.max_beam_size})")
    if decoding.n_best > limits.max_n_best:
        raise RequestError(422, f"n_best {decoding.n_best} is over this server's limit "
                                f"({limits.max_n_best})")
    reach = int(decoding.max_len_a * (max_src_len + 1) + decoding.max_len_b)
    if decoding.max_len is not None:
        reach = min(reach, decoding.max_len)
    if reach > limits.max_output_len:
        raise RequestError(422, f"these length settings let an output reach {reach} tokens; "
                                f"this server's limit is {limits.max_output_len} (lower "
                                "max_len_a / max_len_b, or set max_len)")
    return decoding


def parse_translate(body: bytes, limits: Limits, defaults: Decoding, max_src_len: int,
                    shortlist: bool = False) -> tuple[TranslateRequest, Decoding]:
    """A /translate body, checked: the request and its decoding settings."""
    request = _parse(TranslateRequest, body)
    if not request.text:
        raise RequestError(422, "text: an empty list; send at least one line")
    if len(request.text) > limits.max_lines:
        raise RequestError(422, f"text: {len(request.text)} lines; this server takes at most "
                                f"{limits.max_lines} per request")
    for i, line in enumerate(request.text):
        if len(line) > limits.max_chars:
            raise RequestError(422, f"text.{i}: {len(line)} characters; this server takes at "
                                    f"most {limits.max_chars} per line")
    return request, decoding_of(request, defaults, limits, max_src_len, shortlist)


def parse_caption(body: bytes, limits: Limits, defaults: Decoding, max_src_len: int
                  ) -> tuple[CaptionRequest, Decoding]:
    """A /caption body, checked (the image's bytes are read by the worker)."""
    request = _parse(CaptionRequest, body)
    image_bytes(request.image)  # not base64: refused here, before it is queued
    return request, decoding_of(request, defaults, limits, max_src_len)


def image_bytes(image: str) -> bytes:
    """The bytes of a base64 image, with or without a ``data:image/...;base64,`` prefix."""
    if image.startswith("data:"):
        header, sep, image = image.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(422, "image: a data: URL must be base64 "
                                    "(data:image/png;base64,...)")
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "image: not valid base64") from None
    if not data:
        raise RequestError(422, "image: empty")
    return data


def _parse(model: type[Any], body: bytes) -> Any:
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise RequestError(*validation_message(e, list(model.model_fields))) from None


def validation_message(error: ValidationError, keys: list[str]) -> tuple[int, str]:
    """(status, one line) for pydantic's first complaint: 400 for a body that is not
    JSON, 422 for JSON of the wrong shape. ``keys``: the valid keys, named when an
    unknown one is refused."""
    # An unknown key first: it often explains the rest (a misspelt required key).
    problems = sorted(error.errors(), key=lambda p: p["type"] != "extra_forbidden")
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    message = " ".join(str(first["msg"]).split())
    if first["type"] == "json_invalid":
        return 400, f"the body is not valid JSON ({message})"
    if first["type"] == "extra_forbidden":
        message = f"unknown key; valid keys: {', '.join(keys)}"
    line = f"{where}: {message}" if where else f"the body: {message}"
    more = len(problems) - 1
    return 422, line + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")

"""The LitServe APIs: a Translator and a Captioner behind POST /translate and /caption.

LitServe runs each API in an inference worker process of its own: ``setup`` loads the
model there, requests arrive already checked (nmt/serving/requests.py, in the HTTP
process), and LitServe's batching hands ``predict`` the requests that came within
``batch_timeout`` (at most ``max_batch_size``). Translation requests are grouped by
their decoding settings; each group's lines, concatenated, go to one
``Translator.translate`` call under the token budget, which sorts them by length into
batches as translate.py does; the results are cut back so that each request gets
exactly its own lines, in order. A line's translation does not depend on the lines it
is decoded with (tests/test_translate.py), so a request gets what translate.py gives.

Sampling requests are decoded one request at a time: their draws come from one seeded
generator per call, and a request must not get other draws because of its neighbours.
Captions are decoded one request at a time (one image each).
"""

# No "from __future__ import annotations": LitServe reads the request model from
# decode_request's annotation at runtime (FastAPI then parses and documents the body).
import io
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from queue import Empty, Queue
from typing import Any, NamedTuple

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException
from litserve.loops import BatchedLoop
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from PIL import Image

from nmt.data.images import to_pixels
from nmt.decoding.options import Decoding
from nmt.inference.captioner import Caption, Captioner
from nmt.inference.options import resolve_workers, share_threads
from nmt.inference.translator import Candidate, Translation, Translator, length_batches
from nmt.serving.requests import (
    CaptionRequest,
    Limits,
    RequestError,
    TranslateRequest,
    decoding_of,
    image_bytes,
)

# What PIL raises for bytes that are not a readable image (as nmt.data.images).
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ModelSettings:
    """How the inference worker loads and runs a model (conf/serve.yaml)."""

    checkpoint: str | list[str]  # a list: an ensemble
    device: str = "cpu"
    max_src_len: int = 250
    workers: int | None = None  # CPU: batches decoded at once (as translate.py's workers)
    processes: int = 1  # inference worker processes; each takes its share of the threads
    batch_tokens: int = 10000


class Job(NamedTuple):
    """One /translate request as the worker decodes it."""

    lines: list[str]
    decoding: Decoding
    attention: bool


class GatheringLoop(BatchedLoop):
    """LitServe's batched loop, gathering requests without polling.

    LitServe's own gathering asks its queue (a manager process) for a request every
    millisecond, even when idle, and always waits ``batch_timeout``. Here the worker
    blocks until a first request comes, then takes the requests that follow it, until
    none came for ``gap`` seconds (clients answered together come back together, a few
    milliseconds apart), ``batch_timeout`` after the first, or ``max_batch_size``.
    """

    def __init__(self, gap: float) -> None:
        super().__init__()
        self.gap = gap

    def get_batch_requests(self, lit_api: ls.LitAPI, request_queue: Queue,
                           transport: Any) -> tuple[list[Any], list[Any]]:
        payloads: list[Any] = []
        timed_out: list[Any] = []
        deadline = None
        while len(payloads) < lit_api.max_batch_size:
            wait = 1.0 if deadline is None else min(deadline - time.monotonic(), self.gap)
            try:
                item = request_queue.get(timeout=wait) if wait > 0 else request_queue.get_nowait()
            except Empty:
                break  # none in a second (LitServe's loop comes round again) or none more
            except (EOFError, OSError):  # the queue's manager process is gone: shutting down
                raise _StopLoopError() from None
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            queue_id, uid, timestamp, request = item
            deadline = deadline or time.monotonic() + lit_api.batch_timeout
            limit = lit_api.request_timeout
            if limit not in (None, False, -1) and time.monotonic() - timestamp > limit:
                timed_out.append((queue_id, uid))  # LitServe answers these with a 504
            else:
                payloads.append((queue_id, uid, request))
        return payloads, timed_out


def translate_jobs(translator: Translator, jobs: Sequence[Job], batch_tokens: int
                   ) -> list[list[Translation]]:
    """The translations of every job's lines, one list per job: jobs with the same
    decoding settings are translated in one call, sampling jobs each alone."""
    groups: dict[object, list[int]] = {}
    for i, job in enumerate(jobs):
        key = (job.decoding, i) if job.decoding.sampling else job.decoding
        groups.setdefault(key, []).append(i)
    results: list[list[Translation]] = [[] for _ in jobs]
    for members in groups.values():
        lines = [line for i in members for line in jobs[i].lines]
        decoding = jobs[members[0]].decoding
        found = translator.translate(lines, decoding,
                                     attention=any(jobs[i].attention for i in members),
                                     batch_tokens=call_budget(translator, lines, decoding,
                                                              batch_tokens))
        start = 0
        for i in members:
            results[i] = found[start:start + len(jobs[i].lines)]
            start += len(jobs[i].lines)
    return results


def ignore_interrupts() -> None:
    """Ctrl-C in a terminal reaches every process of the group: the workers leave it to
    the HTTP process, which finishes the requests in flight before stopping them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def call_budget(translator: Translator, lines: list[str], decoding: Decoding,
                batch_tokens: int) -> int:
    """A token budget that cuts a call's lines into a multiple of the translator's
    ``workers`` batches of about equal cost, each within ``batch_tokens``.

    With the translator's own cut, the lines of a batch of requests often make one
    batch (greedy search) or one batch more than a round of workers: the other workers
    then wait. The budget is the smallest one that gives no more batches than the next
    multiple of ``workers``; the translator cuts the same way (``length_batches``).
    """
    beams = 1 if decoding.sampling else decoding.beam_size
    if translator.workers == 1 or decoding.sampling:  # sampling: one batch at a time
        return batch_tokens
    ids = translator.src_tokenizer.encode([line for line in lines if line.strip()])
    if not ids:
        return batch_tokens
    lengths = np.array([min(len(seq), translator.max_src_len) + 1 for seq in ids])
    limit = max(batch_tokens // beams, 1)
    workers = translator.workers
    wanted = -(-len(length_batches(lengths, limit)) // workers) * workers
    low, high = 1, limit  # the smallest budget that gives at most `wanted` batches
    while low < high:
        middle = (low + high) // 2
        if len(length_batches(lengths, middle)) <= wanted:
            high = middle
        else:
            low = middle + 1
    return low * beams


def rounded(matrix: torch.Tensor) -> list[list[float]]:
    """Attention weights as JSON: 4 decimals are plenty for a heatmap."""
    return [[round(x, 4) for x in row] for row in matrix.tolist()]


def hypotheses_json(candidates: list[Candidate]) -> list[dict[str, Any]]:
    return [{"text": c.text, "score": c.score} for c in candidates]


class TranslateAPI(ls.LitAPI):
    """POST /translate over a Translator (one checkpoint, an ensemble, or an exported
    model: whatever ``Translator.from_checkpoint`` loads)."""

    def __init__(self, model: ModelSettings, defaults: Decoding, limits: Limits,
                 max_batch_size: int, batch_timeout: float, batch_gap: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         api_path="/translate", loop=GatheringLoop(batch_gap))
        self.model = model
        self.defaults = defaults
        self.limits = limits
        self.translator: Translator | None = None

    def setup(self, device: str) -> None:
        ignore_interrupts()
        device = self.model.device  # ours (cpu, cuda:1, ...), not LitServe's ("cpu")
        if device.startswith("cpu"):  # the worker processes share the cores
            torch.set_num_threads(max(1, torch.get_num_threads() // self.model.processes))
        workers = resolve_workers(self.model.workers, device)
        share_threads(workers)  # then each decoding thread its share of this process'
        self.translator = Translator.from_checkpoint(self.model.checkpoint, device,
                                                     self.model.max_src_len, workers)

    def decode_request(self, request: TranslateRequest) -> Job:
        # Checked in the HTTP process already (nmt/serving/app.py): this cannot fail.
        assert self.translator is not None, "setup() loads the translator"
        decoding = decoding_of(request, self.defaults, self.limits, self.model.max_src_len,
                               self.translator.shortlist is not None)
        return Job(list(request.text), decoding, request.attention)

    def batch(self, inputs: list[Job]) -> list[Job]:
        return inputs

    def predict(self, jobs: list[Job]) -> list[tuple[Job, list[Translation]]]:
        assert self.translator is not None, "setup() loads the translator"
        found = translate_jobs(self.translator, jobs, self.model.batch_tokens)
        return list(zip(jobs, found, strict=True))

    def unbatch(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def encode_response(self, output: tuple[Job, list[Translation]]
                        ) -> dict[str, Any]:
        assert self.translator is not None
        job, translations = output
        src, tgt = self.translator.src_tokenizer, self.translator.tgt_tokenizer
        kept = [line if line.strip() else "" for line in job.lines]
        ids = src.encode(kept)
        out = []
        for line_ids, tr in zip(ids, translations, strict=True):
            best = tr.hypotheses[0]
            item: dict[str, Any] = {
                "text": best.text, "score": best.score,
                "hypotheses": hypotheses_json(tr.hypotheses),
                "source_pieces": src.pieces(line_ids[: self.model.max_src_len]),
                "target_pieces": tgt.pieces(best.tokens), "truncated": tr.truncated}
            if job.attention:
                item["attention"] = rounded(best.attention) if best.attention is not None else []
            out.append(item)
        return {"translations": out}


class CaptionAPI(ls.LitAPI):
    """POST /caption over a Captioner: one image per request."""

    def __init__(self, checkpoint: str, device: str, defaults: Decoding, limits: Limits) -> None:
        super().__init__(max_batch_size=1, api_path="/caption")
        self.checkpoint = checkpoint
        self.device_name = device
        self.defaults = defaults
        self.limits = limits
        self.captioner: Captioner | None = None

    def setup(self, device: str) -> None:
        ignore_interrupts()
        self.captioner = Captioner.from_checkpoint(self.checkpoint, self.device_name)

    def decode_request(self, request: CaptionRequest
                       ) -> tuple[np.ndarray, Decoding, bool]:
        assert self.captioner is not None, "setup() loads the captioner"
        decoding = decoding_of(request, self.defaults, self.limits, self.captioner.grid[0]
                               * self.captioner.grid[1])
        try:
            data = image_bytes(request.image)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                pixels = to_pixels(image, self.captioner.settings.size)
        except RequestError as e:
            raise HTTPException(e.status, e.message) from None
        except IMAGE_ERRORS as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise HTTPException(422, f"image: not a readable image ({reason})") from None
        return pixels, decoding, request.attention

    def predict(self, x: tuple[np.ndarray, Decoding, bool]
                ) -> tuple[Caption, bool]:
        assert self.captioner is not None
        pixels, decoding, attention = x
        [caption] = self.captioner.caption([pixels], decoding, attention=attention)
        return caption, attention

    def encode_response(self, output: tuple[Caption, bool]
                        ) -> dict[str, Any]:
        assert self.captioner is not None
        caption, attention = output
        best = caption.hypotheses[0]
        out: dict[str, Any] = {
            "caption": best.text, "score": best.score,
            "hypotheses": hypotheses_json(caption.hypotheses),
            "words": [p.removeprefix("▁") for p in
                      self.captioner.tokenizer.pieces(best.tokens)],
            "grid": list(caption.grid)}
        if attention:
            out["attention"] = rounded(best.attention) if best.attention is not None else []
        return out

"""Load test of the HTTP server (serve.py) against offline translation, in one run.

    python bench/serve.py --checkpoint model.ckpt [--clients 64] [--beam 5] [--sentences N]
                          [--server-arg batching.batch_timeout=0.02 ...]

Starts the server on a free loopback port (a subprocess), waits for /health, and
drives it with ``--clients`` concurrent clients (threads, one keep-alive connection
each) that send Multi30k en->de test_2016_flickr sources in requests of 1 to 8 lines
(sizes drawn from a seeded generator), every line once, with ``beam_size`` set:
sentences/s over the whole load, p50/p99 request latency, failed requests. The same
lines with the same settings are translated offline in this process through
translate.py's code path and defaults (``Translator.translate_stream``; workers,
threads, batch_tokens, chunk_size as translate.py sets them), and every served line is
compared with its offline translation (``mismatches``, over both passes).

The two alternate: offline, server (two passes over all lines as one sustained
load), offline, server, ..., offline (``--rounds`` loads, one offline pass before,
between and after them), and are compared by their total times, so that a machine
whose speed drifts during the run (other jobs, a shared host) weighs on both alike;
``round_ratios`` gives each load against the mean speed of the offline passes on
either side of it. At the end the server is stopped with SIGTERM and must exit 0. The
last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from multi30k import split_lines  # noqa: E402

from nmt.decoding.options import Decoding  # noqa: E402
from nmt.inference.options import resolve_workers, share_threads  # noqa: E402
from nmt.inference.translator import DEFAULT_BATCH_TOKENS, Translator  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {cpu}, torch {torch.__version__}"


def requests_of(lines: list[str], seed: int, most: int) -> list[tuple[int, list[str]]]:
    """(first line's index, lines): consecutive runs of 1..``most`` lines, every line once."""
    rng = random.Random(seed)
    out, start = [], 0
    while start < len(lines):
        n = rng.randint(1, most)
        out.append((start, lines[start:start + n]))
        start += n
    return out


def start_server(checkpoint: str, port: int, extra: list[str]) -> subprocess.Popen[str]:
    args = [sys.executable, str(ROOT / "serve.py"), f"checkpoint={checkpoint}",
            f"port={port}", *extra]
    return subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.DEVNULL)


def wait_healthy(port: int, server: subprocess.Popen[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode} while starting")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not become healthy in time")


def drive(port: int, jobs: list[tuple[int, list[str]]], clients: int, beam: int,
          translations: list[str | None]) -> dict[str, Any]:
    """Send every job, ``clients`` at a time; fill ``translations``; time it all."""
    todo = iter(jobs)
    lock = threading.Lock()
    latencies: list[float] = []
    failed = [0]

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                job = next(todo, None)
            if job is None:
                return
            start, lines = job
            body = json.dumps({"text": lines, "beam_size": beam})
            began = time.perf_counter()
            try:
                conn.request("POST", "/translate", body,
                             {"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                ok = False
            took = time.perf_counter() - began
            with lock:
                latencies.append(took)
                if not ok:
                    failed[0] += 1
                    continue
                for i, item in enumerate(json.loads(payload)["translations"]):
                    translations[start + i] = item["text"]

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - began, "failed": failed[0],
            "latencies": latencies}


def percentile(sorted_values: list[float], q: float) -> float:
    """In milliseconds: the value below which a fraction ``q`` of the requests fall."""
    return round(1000 * sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))],
                 1)


def offline_translator(checkpoint: str) -> Translator:
    """translate.py's defaults: ``workers`` batches at once, each on its share of threads."""
    workers = resolve_workers(None, "cpu")
    share_threads(workers)
    return Translator.from_checkpoint(checkpoint, "cpu", workers=workers)


def offline(translator: Translator, lines: list[str], beam: int) -> tuple[list[str], float]:
    """translate.py's path (translate_stream) and defaults: the translations, seconds."""
    decoding = Decoding(beam_size=beam)
    began = time.perf_counter()
    out = [t.text for t in translator.translate_stream(
        lines, decoding, batch_tokens=DEFAULT_BATCH_TOKENS, chunk_size=2000)]
    return out, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=0, help="first N lines (0: all)")
    parser.add_argument("--max-lines", type=int, default=8, help="lines per request, at most")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3,
                        help="server loads, each between two offline passes")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="a serve.py override, e.g. batching.batch_timeout=0.02")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    lines, _ = split_lines("test_2016_flickr")
    lines = lines[: args.sentences] if args.sentences else lines
    jobs = requests_of(lines, args.seed, args.max_lines)
    translator = offline_translator(args.checkpoint)
    translator.translate_text(lines[:50], Decoding(beam_size=args.beam))  # warm-up
    port = free_port()
    server = start_server(args.checkpoint, port, args.server_arg)
    try:
        wait_healthy(port, server)
        drive(port, [(0, lines[:8])], 1, args.beam, [None] * 8)  # warm-up
        reference, offline_s = offline(translator, lines, args.beam)
        offline_times, loads, mismatches = [offline_s], [], 0
        for _ in range(args.rounds):
            # Two passes as one sustained load: every line twice (the second time at
            # index + len(lines)), so that the tail of a pass, when fewer clients are
            # left than the server can batch, weighs half as much.
            served: list[str | None] = [None] * (2 * len(lines))
            loads.append(drive(port, jobs + [(start + len(lines), chunk)
                                             for start, chunk in jobs],
                               args.clients, args.beam, served))
            mismatches += sum(s != r for s, r in zip(served, reference * 2, strict=True))
            again, seconds = offline(translator, lines, args.beam)
            offline_times.append(seconds)
            if again != reference:
                sys.exit("offline translation is not deterministic")
    finally:
        server.send_signal(signal.SIGTERM)
        status = server.wait(timeout=120)
    if status != 0:
        sys.exit(f"the server exited with status {status} after SIGTERM")

    served_s = sum(load["wall_s"] for load in loads)
    speed = 2 * len(lines) * len(loads) / served_s
    offline_speed = len(lines) * len(offline_times) / sum(offline_times)
    # A load's 2 passes against the 2 offline passes around it: same lines, time ratio.
    round_ratios = [round((before + after) / load["wall_s"], 3)
                    for load, before, after in zip(loads, offline_times[:-1], offline_times[1:],
                                                   strict=True)]
    latencies = sorted(x for load in loads for x in load["latencies"])
    result = {
        "sentences_per_s": round(speed, 1),
        "latency_p50_ms": percentile(latencies, 0.5), "latency_p99_ms": percentile(latencies, 0.99),
        "failed_requests": sum(load["failed"] for load in loads),
        "offline_sentences_per_s": round(offline_speed, 1),
        "throughput_ratio": round(speed / offline_speed, 3), "round_ratios": round_ratios,
        "mismatches": mismatches,
        "clients": args.clients, "beam_size": args.beam, "sentences": len(lines),
        "rounds": len(loads), "passes": 2 * len(loads), "requests": 2 * len(jobs) * len(loads),
        "server_args": args.server_arg,
        "date": datetime.date.today().isoformat(), "machine": machine()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()

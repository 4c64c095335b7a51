"""Data preparation benchmark: Multi30k en->de from raw files to batches, or at scale.

    python bench/data.py [hydra overrides, e.g. tokenizer.vocab_size=16000 max_tokens=8000]

Cold: an empty cache directory, so the tokenizer is trained and every split encoded; warm:
the same again, everything cached. Both end with one epoch of padded training batches.

    python bench/data.py --pairs 1000000,10000000 [--workers 1,2,0] [--ranks 1,2]
        [--corpus-dir /tmp/nmt-bench-corpus] [--keep DIR] [overrides]

Scale: N lines of 1-3 random Multi30k en-de training pairs joined by a space (seeded,
cached in --corpus-dir/<N>/; dev: Multi30k's val); in subprocesses whose process trees are
polled for peak RSS, ``nmt.cli prepare`` per data.workers count (0: all cores; left out
while no such key exists) in a fresh data.root, the first training the tokenizer and the
others copying its spm/; then one step of the default model on 1 and 2 CPU ranks (DDP).
Overrides data.* and tokenizer.* go to prepare and train, the others to train only.
The last line printed is one JSON object (keys are compared from run to run: keep them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# isort: off
import nmt  # noqa: E402, F401  (first: makes an installed torchvision importable for lightning)
import lightning as L  # noqa: E402
# isort: on
from nmt.data.catalog import fetch_split  # noqa: E402
from nmt.data.corpus import read_lines, read_parallel  # noqa: E402
from nmt.data.datamodule import NMTDataModule  # noqa: E402
from nmt.data.summary import padding_ratio  # noqa: E402

CORPUS_DIR = Path(tempfile.gettempdir()) / "nmt-bench-corpus"
BLOCK_LINES = 100_000  # lines generated and written at a time: memory stays flat in N
LANGS = ("en", "de")
GB = 2**20  # /proc and ru_maxrss count kB
FIRST_STEP = "callback: seconds from launch to the start of the first training batch"
TOKENIZER = "trained by the first prepare run; the others copy its spm/ and only encode"


def to_batches(data: dict, tokenizer: dict, max_tokens: int) -> tuple[NMTDataModule, int]:
    dm = NMTDataModule(data, tokenizer, max_tokens=max_tokens)
    dm.prepare_data()
    dm.setup("fit")
    return dm, sum(1 for _ in dm.train_dataloader())


def multi30k(overrides: list[str]) -> dict:
    """Cold and warm preparation of conf/prepare.yaml's data (the mode without --pairs)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="prepare", overrides=overrides)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    tokenizer = OmegaConf.to_container(cfg.tokenizer, resolve=True)
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        data["root"] = tmp
        start = time.perf_counter()
        dm, n_batches = to_batches(data, tokenizer, cfg.max_tokens)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        dm, n_batches = to_batches(data, tokenizer, cfg.max_tokens)
        warm = time.perf_counter() - start
        prepared = dm.prepared
        files = prepared.files["train"]
        src, tgt = zip(*read_parallel(files.src, files.tgt), strict=True)
        start = time.perf_counter()
        prepared.src_tokenizer.encode(list(src))
        prepared.tgt_tokenizer.encode(list(tgt))
        encode_s = time.perf_counter() - start

        return {"data": data["name"], "train_pairs": len(dm.dataset("train")),
                "vocab_size": prepared.tgt_tokenizer.vocab_size, "max_tokens": cfg.max_tokens,
                "batches": n_batches, "prepare_cold_s": round(cold, 3),
                "prepare_warm_s": round(warm, 3),
                "encode_sentences_per_s": round(2 * len(src) / encode_s),
                "padding_ratio": round(padding_ratio(dm.train_sampler()), 4)}


def packed(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A file's lines, each followed by a space, as one uint8 array: (text, starts, lengths)."""
    lines = [line.encode() + b" " for line in read_lines(path)]
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    return np.frombuffer(b"".join(lines), dtype=np.uint8), np.cumsum(lengths) - lengths, lengths


def joined_block(text: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 picks: np.ndarray, per_line: np.ndarray) -> bytes:
    """Lines ``picks`` laid end to end, ``per_line`` of them an output line, as bytes."""
    lens = lengths[picks]
    ends = np.cumsum(lens)
    out = text[np.repeat(starts[picks] - (ends - lens), lens) + np.arange(ends[-1])]
    out[ends[np.cumsum(per_line) - 1] - 1] = ord("\n")  # the last pick's space ends the line
    return out.tobytes()


def corpus(n: int, corpus_dir: Path, seed: int) -> tuple[Path, float | None]:
    """``corpus_dir/<n>/train.{en,de}``, written a block at a time unless already there:
    (directory, seconds spent generating or None when cached)."""
    out, start = corpus_dir / str(n), time.perf_counter()
    stamp = {"pairs": n, "seed": seed, "version": 1, "block": BLOCK_LINES}  # version: of the text
    done = out / "corpus.json"
    if done.is_file() and json.loads(done.read_text()) == stamp:
        return out, None
    train = fetch_split("multi30k", "train", *LANGS, corpus_dir / "fetch")  # $NMT_DATA_DIR
    sides = [packed(train.src), packed(train.tgt)]
    out.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    rng = np.random.default_rng(seed)  # corpus.json, written last, marks a complete corpus
    with open(out / "train.en", "wb") as src, open(out / "train.de", "wb") as tgt:
        for first in range(0, n, BLOCK_LINES):
            per_line = rng.integers(1, 4, min(BLOCK_LINES, n - first))
            picks = rng.integers(0, len(sides[0][1]), int(per_line.sum()))
            for f, side in zip((src, tgt), sides, strict=True):
                f.write(joined_block(*side, picks, per_line))
    done.write_text(json.dumps(stamp))
    return out, time.perf_counter() - start


def tree(root: int) -> list[int]:
    """``root`` and its descendants, from the parent pids in /proc/<pid>/stat."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    pids, new = {root}, {root}
    while new:
        new = {p for p, pp in parent.items() if pp in new} - pids
        pids |= new
    return sorted(pids)


def run_measured(cmd: list[str], work: Path, name: str) -> dict:
    """Run ``cmd`` in ``work`` with this checkout's nmt first on the path, polling its
    process tree: wall time, exit status, stdout, the peak RSS of each process (kB, with
    its command line; the child's own from wait4) and of the tree (sum of RSS, GB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    peaks: dict[int, list] = {}
    tree_peak, launched, start = 0, time.time(), time.perf_counter()
    with open(work / f"{name}.out", "w") as out, open(work / f"{name}.err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=work, stdout=out, stderr=err, env=env)
        while not (done := os.wait4(proc.pid, os.WNOHANG))[0]:
            total = 0
            for pid in tree(proc.pid):
                try:  # VmHWM: the process's own peak so far
                    kb = dict(re.findall(r"^(VmHWM|VmRSS):\s+(\d+)",
                                         Path(f"/proc/{pid}/status").read_text(), re.M))
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue  # gone meanwhile
                peak = peaks.setdefault(pid, [0, cmdline.decode()])
                peak[0] = max(peak[0], int(kb.get("VmHWM", 0)))
                total += int(kb.get("VmRSS", 0))
            tree_peak = max(tree_peak, total)
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(done[1])
    main = peaks.setdefault(proc.pid, [0, " ".join(cmd)])
    main[0] = max(main[0], done[2].ru_maxrss)
    result = {"rc": proc.returncode, "wall_s": time.perf_counter() - start,
              "launched": launched, "main": proc.pid, "peaks": peaks,
              "tree_peak_rss_gb": round(tree_peak / GB, 3),
              "stdout": (work / f"{name}.out").read_text()}
    if proc.returncode:
        result["error"] = f"exit {proc.returncode}: {(work / f'{name}.err').read_text()[-600:]}"
    return result


def prepare_run(n: int, data: list[str], root: Path, workers: int | None,
                spm_from: Path | None, work: Path) -> dict:
    """One ``nmt.cli prepare`` in ``root`` (fresh), its tokenizer copied from ``spm_from``."""
    if spm_from is not None:
        shutil.copytree(spm_from / "scale" / "spm", root / "scale" / "spm")
    cmd = [sys.executable, "-m", "nmt.cli", "prepare", *data,  # data.workers=null: all cores
           *([] if workers is None else [f"data.workers={workers or 'null'}"])]
    m = run_measured(cmd, work, f"prepare-{n}-{root.name}")
    if "error" in m:
        return {"error": m["error"], "wall_s": round(m["wall_s"], 2)}
    summary = json.loads(m["stdout"][m["stdout"].rfind("\n{") + 1:])  # logs, then the JSON
    timings = summary.get("timings_s", {})
    encode_s = timings.get("encode_s")
    workers_kb = [kb for pid, (kb, cmdline) in m["peaks"].items() if pid != m["main"]
                  and not re.search(r"resource_tracker|forkserver", cmdline)]
    return {"wall_s": round(m["wall_s"], 2), "timings_s": timings,
            "tokenizer_s": timings.get("tokenizer_s"), "encode_s": encode_s,
            "encode_pairs_per_s": round(n / encode_s) if encode_s else None,
            "tokenizer_reused": spm_from is not None, "train_pairs": summary["train"]["pairs"],
            "train_dropped": summary["train"].get("clean", {}).get("dropped"),
            "peak_rss_gb": round(m["peaks"][m["main"]][0] / GB, 3), "tree_peak_rss_gb":
            m["tree_peak_rss_gb"], "worker_peak_rss_gb": [round(kb / GB, 3) for kb in workers_kb]}


def prepare_all(n: int, data_of: Callable[[Path], list[str]], args: argparse.Namespace,
                work: Path) -> tuple[dict, Path | None]:
    """``prepare`` per worker count, each in a fresh root: (results, the first good root)."""
    results, first, keyed = {}, None, args.workers_key
    for w in args.workers if keyed else [1]:  # without data.workers every run is one worker
        label = "all" if w == 0 else str(w)
        root = work / f"root-{label}"
        shutil.rmtree(root, ignore_errors=True)
        results[label] = prepare_run(n, data_of(root), root, w if keyed else None, first, work)
        if first is None and "error" not in results[label]:
            first = root
        elif args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return results, first


def disk_per_token(root: Path) -> dict:
    """Bytes on disk of the encoded training split per token (source and target)."""
    split = max((root / "scale" / "encoded").glob("*/train"), key=lambda p: p.stat().st_mtime)
    tokens = sum(int(np.load(split / f"{side}.offsets.npy", mmap_mode="r")[-1])
                 for side in ("src", "tgt"))
    sizes = {p.name: p.stat().st_size for p in split.iterdir() if p.is_file()}
    counts = sizes.pop("cooccurrence.npz", 0)  # the shortlist's counts: a bounded sample
    ids = sizes.get("src.ids", 0) + sizes.get("tgt.ids", 0)
    return {"bytes_per_token": round(sum(sizes.values()) / tokens, 3), "train_tokens": tokens,
            "ids_bytes_per_token": round(ids / tokens, 3), "cooccurrence_bytes": counts}


class FirstStep(L.Callback):
    """Appends {"rank", "start", "end"} (time.time()) of the first step to ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.start = path, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        self.start = self.start or time.time()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.path:
            line = {"rank": trainer.global_rank, "start": self.start, "end": time.time()}
            with open(self.path, "a") as f:
                f.write(json.dumps(line) + "\n")
            self.path = ""  # the first step only


def train_run(data: list[str], ranks: int, extra: list[str], work: Path) -> dict:
    """One training step on ``ranks`` CPU processes: time to the first step, peak RSS."""
    stamps = work / f"first-step-{ranks}.jsonl"
    stamps.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "train.py"), *data, "trainer.max_steps=1",
           "+trainer.limit_val_batches=0", "test_after_training=false", f"run_dir={work / 'run'}",
           "optim.scheduler=null",  # the default (plateau) follows validation, which is off
           "+callbacks.extra.first_step._target_=bench.data.FirstStep",
           f"+callbacks.extra.first_step.path={stamps}", *extra]
    if ranks > 1:
        cmd += [f"trainer.devices={ranks}", "trainer.strategy=ddp", "trainer.accelerator=cpu"]
    m = run_measured(cmd, work, f"train-{ranks}")
    if "error" in m or not stamps.is_file():
        return {"error": m.get("error", "no training step"), "wall_s": round(m["wall_s"], 2)}
    steps = [json.loads(line) for line in stamps.read_text().splitlines()]
    ranks_kb = [kb for pid, (kb, cmdline) in sorted(m["peaks"].items(),
                key=lambda item: item[0] != m["main"]) if "train.py" in cmdline]
    return {"first_step_s": round(max(s["start"] for s in steps) - m["launched"], 2),
            "first_step_end_s": round(max(s["end"] for s in steps) - m["launched"], 2),
            "wall_s": round(m["wall_s"], 2), "ranks_stepped": len(steps),
            "peak_rss_gb": round(max(ranks_kb) / GB, 3),
            "peak_rss_gb_per_rank": [round(kb / GB, 3) for kb in ranks_kb],
            "tree_peak_rss_gb": m["tree_peak_rss_gb"]}


def size_report(n: int, args: argparse.Namespace, extra: list[str], work: Path) -> dict:
    """Generate (or reuse) the corpus of ``n`` pairs, prepare it per worker count, train."""
    train_dir, generate_s = corpus(n, args.corpus_dir, args.seed)
    valid = fetch_split("multi30k", "val", *LANGS, args.corpus_dir / "fetch")
    shared = [o for o in extra if o.lstrip("+~").startswith(("data.", "tokenizer."))]

    def data_of(root: Path) -> list[str]:
        return ["data=files", "data.name=scale", "data.src_lang=en", "data.tgt_lang=de",
                *(f"data.files.train.{k}={train_dir / f'train.{lang}'}"
                  for k, lang in zip(("src", "tgt"), LANGS, strict=True)),
                f"data.files.valid.src={valid.src}", f"data.files.valid.tgt={valid.tgt}",
                f"data.root={root}", *shared]

    prepare, root = prepare_all(n, data_of, args, work)
    first = next((r for r in prepare.values() if r.get("tokenizer_reused") is False), {})
    one, two = (prepare.get(k, {}).get("encode_s") for k in ("1", "2"))
    report = {"generate_s": None if generate_s is None else round(generate_s, 2),
              "corpus_bytes": sum((train_dir / f"train.{s}").stat().st_size for s in LANGS),
              "prepare": prepare, "tokenizer_train_s": first.get("tokenizer_s"),
              "speedup_2_workers": round(one / two, 3) if one and two else None}
    if root is not None:
        report.update(disk_per_token(root))
        for ranks in args.ranks:
            prefix = "train" if ranks == 1 else f"ddp{ranks}"
            report.update({f"{prefix}_{k}": v for k, v in
                           train_run(data_of(root), ranks, extra, work).items()})
    return report


def scale(args: argparse.Namespace, extra: list[str]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        args.workers_key = "workers" in compose("prepare", overrides=["data=files"]).data
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    result = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
              "machine": (re.findall(r"^Model name:\s*(.+)$", cpu, re.M) or ["?"])[0].strip(),
              "workers_key": args.workers_key, "first_step": FIRST_STEP, "tokenizer": TOKENIZER,
              "overrides": extra, "sizes": {}}
    for n in args.pairs:
        work = (args.keep or Path(tempfile.mkdtemp(prefix="nmt-bench-scale-"))) / str(n)
        work.mkdir(parents=True, exist_ok=True)
        try:
            result["sizes"][str(n)] = size_report(n, args, extra, work.resolve())
        finally:
            if args.keep is None:
                shutil.rmtree(work.parent, ignore_errors=True)
    return result


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int_list, help="corpus sizes, e.g. 1000000,10000000")
    parser.add_argument("--workers", type=int_list, default=[1, 2, 0], help="0: all cores")
    parser.add_argument("--ranks", type=int_list, default=[1, 2], help="'': no training")
    parser.add_argument("--corpus-dir", type=lambda p: Path(p).resolve(), default=CORPUS_DIR)
    parser.add_argument("--keep", type=Path, help="work directory (default: temporary)")
    parser.add_argument("--seed", type=int, default=1)
    args, overrides = parser.parse_known_args()
    if args.pairs is None:
        print(json.dumps(multi30k(overrides)))
        return
    if not args.pairs or min(args.pairs) < 1 or min(args.workers, default=0) < 0:
        parser.error("--pairs needs sizes of at least 1, --workers counts of at least 0")
    print(json.dumps(scale(args, overrides)))


if __name__ == "__main__":
    main()

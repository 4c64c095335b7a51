"""Two nodes simulated on one machine: torchrun's static rendezvous on the loopback.

``train.py`` runs under torchrun twice with the same seed and the same fixed number of
steps: once as two nodes of one gloo CPU process each (two torchrun commands started
together, node ranks 0 and 1, each node with its own data cache, as on machines that
share no disk), once as one node of two processes. Both are DDP over two ranks with
the same data split, so the final weights must be the same.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import files_config
from train_helpers import ROOT, toy_overrides

from nmt.decoding.checkpoints import load_checkpoint

STEPS = 4
TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(toy_dir: Path, cache: Path, run_dir: Path, num_nodes: int, devices: int
               ) -> list[str]:
    """train.py and its overrides: the toy model, DDP on CPU, STEPS steps, no validation."""
    # trainer=ddp: the default trainer=cpu has no num_nodes key to override.
    return [str(ROOT / "train.py"), *toy_overrides(files_config(toy_dir, cache), run_dir),
            "trainer=ddp", "trainer.accelerator=cpu", "trainer.precision=32-true",
            f"trainer.devices={devices}", f"trainer.num_nodes={num_nodes}",
            f"trainer.max_steps={STEPS}", "+trainer.limit_val_batches=0",
            "optim.scheduler=null", "test_after_training=false",
            "logger={}", "hydra.output_subdir=null", f"hydra.run.dir={run_dir}/hydra"]


def torchrun(nnodes: int, nproc: int, node_rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}", f"--node-rank={node_rank}", "--rdzv-backend=static",
            "--master-addr=127.0.0.1", f"--master-port={port}"]


def launch(commands: list[list[str]], cwd: Path, name: str) -> list[str]:
    """Start the commands together and wait for all; the first failure stops the others
    (a node left alone would wait for its peer until the rendezvous times out).
    Returns their outputs (stdout and stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [cwd / f"{name}-{i}.log" for i in range(len(commands))]
    procs = []
    for cmd, log in zip(commands, logs, strict=True):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.returncode for p in procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, f"{log} (exit {p.returncode}):\n{log.read_text()[-4000:]}"
    return [log.read_text() for log in logs]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))
    assert ckpt["global_step"] == STEPS
    return ckpt["state_dict"]


@pytest.mark.slow
def test_two_nodes_train_like_one_node_with_two_processes(toy_dir, tmp_path):
    port = free_port()
    two_nodes = [[*torchrun(2, 1, k, port),
                  *train_args(toy_dir, tmp_path / f"cache-node{k}", tmp_path / f"nodes-{k}",
                              num_nodes=2, devices=1)] for k in (0, 1)]
    logs = launch(two_nodes, tmp_path, "two-nodes")
    # The second run starts from an empty cache: its two processes start together and
    # one prepares while the other waits (nmt.data.prepare's lock).
    one_node = [*torchrun(1, 2, 0, free_port()),
                *train_args(toy_dir, tmp_path / "cache-one-node", tmp_path / "one-node",
                            num_nodes=1, devices=2)]
    launch([one_node], tmp_path, "one-node")

    a, b = final_weights(tmp_path / "nodes-0"), final_weights(tmp_path / "one-node")
    # Node 1 joined node 0 as global rank 1 (rank 0 alone saves checkpoints).
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    assert not (tmp_path / "nodes-1" / "checkpoints").exists()
    assert a.keys() == b.keys() and a
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"weights differ: {differ}"

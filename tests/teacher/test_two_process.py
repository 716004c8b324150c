"""A real distributed run on one machine: 2 processes, gloo on 127.0.0.1, ZeRO 1.

The trainer feeds every optimizer step the same global batch whatever the process count, so
the loss curve of 2 processes must equal that of 1 up to summation order (which is why
`distributed` is not a DVC parameter of `teacher`, docs/decisions.md). Each run starts in a
fresh subprocess (two_process_worker.py) so neither inherits the other's process group.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.settings import REPO_ROOT

WORKER = Path(__file__).with_name("two_process_worker.py")
STEPS = 6
TOLERANCE = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_loss_curve_matches_single_process(tiny_model_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)  # each run gets its own rendezvous
    args = [str(WORKER), "--model-dir", str(tiny_model_dir), "--steps", str(STEPS)]
    one, two = tmp_path / "losses_1proc.json", tmp_path / "losses_2proc.json"
    launchers = {
        one: [sys.executable, *args, "--zero-stage", "0", "--out", str(one)],
        two: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
              *args, "--zero-stage", "1", "--out", str(two)],
    }
    for command in launchers.values():
        result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert len(single) == len(double) == STEPS
    diffs = [abs(a - b) for a, b in zip(single, double, strict=True)]
    assert max(diffs) <= TOLERANCE, f"1 process {single}\n2 processes {double}"
    assert single[-1] < single[0]  # it trained: the curves compared are not flat

"""A real distributed run on one machine: 2 processes, gloo on 127.0.0.1, ZeRO 1."""

import subprocess
import sys

import pytest

from components.settings import REPO_ROOT


@pytest.mark.slow
def test_two_process_loss_curve_matches_single_process(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts/ds_two_process_check.py"), "--steps", "6",
         "--workdir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "max abs diff" in result.stdout.lower()

"""SIGKILL `train_teacher` mid-run, start it again: it resumes from the last checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import MINI, project_env, run

pytestmark = pytest.mark.slow


def _latest_step(checkpoints):
    latest = [p for p in checkpoints.glob("*/latest")]
    if not latest:
        return 0
    return int(latest[0].read_text().strip().removeprefix("step"))


def test_killed_training_resumes_from_last_checkpoint(repo_copy, tmp_path):
    root = repo_copy
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["teacher"].update(max_steps=40, checkpoint_every=2)
    params_file = tmp_path / "params-resume.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    if not (root / "outputs" / MINI / "runs/bm25/train.trec").exists():
        run(["dvc", "repro", "bm25", "base_model"], root)
    checkpoints = root / "outputs" / MINI / "teacher" / "checkpoints"
    command = ["python", "-m", "flows.train_teacher", "--params", str(params_file)]

    process = subprocess.Popen(command, cwd=root, env=project_env(root),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while _latest_step(checkpoints) < 4 and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _latest_step(checkpoints)
    assert 4 <= killed_at < 40, f"the run was not killed mid-way (checkpoint {killed_at})"

    result = run(command + [], root)
    assert result.returncode == 0
    assert (root / "outputs" / MINI / "teacher/model/model.safetensors").exists()
    assert not checkpoints.exists()  # removed once training completed

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rerank-distill")
    resumed = client.search_runs([experiment.experiment_id],
                                 "tags.stage = 'train_teacher' and attributes.status = 'FINISHED'",
                                 order_by=["attributes.start_time DESC"], max_results=1)[0]
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert steps[0] > killed_at - 2 and steps[0] > 1, steps  # resumed, not from step 1
    assert steps[-1] == 40
    # Put the pipeline's own outputs back for whatever runs next (when the pipeline ran
    # before this test; run alone, there is nothing recorded to restore).
    run(["dvc", "checkout", "--force"], root, check=False)

"""Faults on the real pipeline (DVC, Prefect, MLflow; tiny model, mini SciFact, repo copy).

- Each long stage is SIGKILLed once, at a seeded random point of its work, while `dvc repro`
  runs it; DVC must not accept what the killed run left, and the rerun must resume from the
  last checkpoint (training stages) and end with outputs bit-identical to the uninterrupted
  run's (every file of every output; in the students' summary.json all but the timings), so
  the pipeline's metrics are identical too.
- Two runs with the same seed give identical outputs and metrics (determinism on CPU).
- A second `dvc repro` while one runs is refused, naming the process that holds the paths;
  the first finishes with the same outputs as before.
- A Prefect server that goes away mid-stage: the stage still finishes, DVC records it in
  dvc.lock and MLflow holds its finished run.
- No secret from the environment ends up in MLflow, the outputs or the logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.e2e.conftest import MINI, project_env

pytestmark = pytest.mark.slow

KILL_SEED = 9  # picks the kill point of each stage
SECRET = "sentinel-4b1d9c-not-a-real-key"
SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": SECRET, "HF_TOKEN": SECRET, "RERANK_API_KEY": SECRET}


TIMINGS = re.compile(r"_seconds$|_ms_per_query$")


LATENCY_CELL = re.compile(r"[\d.]+ / [\d.]+")  # "median / p95" in results.md
CURVE_TIMINGS = {"tokens_per_s", "elapsed_s"}


def _without_timings(value):
    """A JSON value without its timing keys, at any depth (Rabtriever's per-round records)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not TIMINGS.search(k)}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _digest(path: Path) -> str:
    """md5 of a file, without the wall-clock measurements it holds (they vary per run): a
    student's summary.json timings (nested ones too), a run's measured latency (cost.json),
    the latency columns of the results table and the teacher curve's throughput and elapsed
    time."""
    if path.name == "summary.json":
        return json.dumps(_without_timings(json.loads(path.read_text())))
    if path.name == "cost.json":
        return json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                           if k != "latency"})
    if path.name == "results.md":
        # Cell by cell, stripped: the padding follows the widest latency cell's width.
        rows = [[LATENCY_CELL.sub("", cell).strip(" :-") for cell in line.split("|")]
                for line in path.read_text().splitlines()]
        return json.dumps(rows)
    if path.name in ("results.csv", "curve.csv"):  # curve.csv: the teacher's training curve
        lines = [line.split(",") for line in path.read_text().splitlines()]
        keep = [i for i, name in enumerate(lines[0])
                if not name.startswith("latency") and name not in CURVE_TIMINGS]
        return json.dumps([[row[i] for i in keep] for row in lines])
    return hashlib.md5(path.read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    reference: dict  # stage -> {output file: digest} of the uninterrupted run
    metrics: bytes  # eval/metrics.json of the uninterrupted run
    logs: list[str]

    def sh(self, *command: str, check: bool = True, env: dict | None = None):
        result = subprocess.run(command, cwd=self.root, env=env or self.env, text=True,
                                capture_output=True, timeout=600)
        self.logs.append(result.stdout + result.stderr)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def outs(self, stage: str) -> dict[str, str]:
        """Every file of the stage's outputs (as dvc.lock lists them) -> a digest of it."""
        lock = yaml.safe_load((self.root / "dvc.lock").read_text())
        files = {}
        for out in lock["stages"][stage]["outs"]:
            path = self.root / out["path"]
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    files[str(file.relative_to(self.root))] = _digest(file)
        return files

    def status(self) -> dict:
        return json.loads(self.sh("dvc", "status", "--json").stdout or "{}")

    def runs(self, stage: str, status: str = "FINISHED"):
        """The stage's MLflow runs in `status`, newest first, and the client that found them."""
        client = MlflowClient(tracking_uri=f"sqlite:///{self.root / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("rerank-distill")
        runs = client.search_runs([experiment.experiment_id],
                                  f"tags.stage = '{stage}' and attributes.status = '{status}'",
                                  order_by=["attributes.start_time DESC"])
        return client, runs

    def latest_run(self, stage: str):
        client, runs = self.runs(stage)
        return client, runs[0]


@pytest.fixture(scope="module")
def prefect_api():
    """One Prefect server for every stage process here (each would otherwise start its own)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=_free_port())
    server.start()
    yield server.api_url
    server.stop()


@pytest.fixture(scope="module")
def project(repo_copy, prefect_api) -> Project:
    env = {**project_env(repo_copy), "PREFECT_API_URL": prefect_api, "PYTHONUNBUFFERED": "1",
           **SECRET_ENV}
    project = Project(repo_copy, env, {}, b"", [])
    project.sh("dvc", "repro")  # the uninterrupted run (a no-op if tests/e2e made it already)
    assert project.status() == {}
    lock = yaml.safe_load((repo_copy / "dvc.lock").read_text())
    project.reference = {stage: project.outs(stage) for stage in lock["stages"]}
    project.metrics = (repo_copy / "outputs" / MINI / "eval/metrics.json").read_bytes()
    return project


# -- progress of a stage's work, read from what it writes -----------------------------------


def _latest_step(folder: Path) -> int:
    """Step of the checkpoint `folder/*/latest` or `folder/latest` names (0: none): every
    trainer's checkpoints are the training loop's, a DeepSpeed `latest` naming `stepNNNNNNNN`."""
    for latest in [*folder.glob("*/latest"), folder / "latest"]:
        try:
            return int(latest.read_text().strip().removeprefix("step"))
        except (OSError, ValueError):
            continue
    return 0


def _teacher_progress(root: Path, since: float) -> int:
    return _latest_step(root / "outputs" / MINI / "teacher" / "checkpoints")


def _jepa_progress(root: Path, since: float) -> int:
    """Epochs done, from the loop state of the checkpoint `latest` names (one every epoch)."""
    folder = root / "outputs" / MINI / "checkpoints" / "rabtriever"
    for latest in folder.glob("*/latest"):
        try:
            tag = latest.read_text().strip()
            return json.loads((latest.parent / tag / "loop_state.json").read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            continue
    return 0


def _dgr_progress(root: Path, since: float) -> int:
    runs = list((root / "outputs" / MINI / "checkpoints" / "dgr").glob("*"))
    return sum(_latest_step(run / part) for run in runs for part in ("stage1", "stage2"))


RANK_LISTS_FILES = ["runs/teacher/test.trec", "rank_lists/train_states.safetensors",
                    "runs/teacher/train.trec", "rank_lists/pairs.parquet"]


def _rank_lists_progress(root: Path, since: float) -> int:
    """Outputs written since the run started (it keeps no checkpoints: a rerun redoes all)."""
    paths = [root / "outputs" / MINI / name for name in RANK_LISTS_FILES]
    return sum(path.exists() and path.stat().st_mtime >= since for path in paths)


@dataclass(frozen=True)
class LongStage:
    name: str
    progress: Callable[[Path, float], int]  # work done (checkpointed steps, epochs, files)
    total: Callable[[dict], int]  # units of work in a whole run, from params.yaml
    resumed: Callable[[MlflowClient, str, int], None] | None  # asserts the rerun resumed


def _steps(client, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _teacher_resumed(client, run_id, killed_at):
    steps, total = _steps(client, run_id, "loss"), int(client.get_run(run_id).data.params[
        "teacher.max_steps"])
    assert len(steps) <= total - killed_at, (steps, killed_at)
    assert steps == list(range(total - len(steps) + 1, total + 1))


def _jepa_resumed(client, run_id, killed_at):
    epochs = [m.value for m in client.get_metric_history(run_id, "epoch")]
    assert all(epoch >= killed_at for epoch in epochs), (epochs, killed_at)


def _dgr_resumed(client, run_id, killed_at):
    steps = _steps(client, run_id, "stage1_loss") + _steps(client, run_id, "stage2_loss")
    assert len(steps) <= 5 - killed_at, (steps, killed_at)


LONG_STAGES = [
    LongStage("teacher", _teacher_progress, lambda p: p["teacher"]["max_steps"],
              _teacher_resumed),
    LongStage("rank_lists", _rank_lists_progress, lambda p: len(RANK_LISTS_FILES), None),
    LongStage("rabtriever", _jepa_progress, lambda p: p["rabtriever"]["epochs"], _jepa_resumed),
    LongStage("dgr", _dgr_progress,
              lambda p: p["dgr"]["stage1_steps"] + p["dgr"]["stage2_steps"], _dgr_resumed),
]


def _progress_now(project: Project, stage: LongStage, since: float) -> int:
    """The stage's progress, polled while it runs. DVC deletes a stage's outputs as it starts
    it, so a file or folder seen a moment ago can be gone when it is read: no progress yet."""
    try:
        return stage.progress(project.root, since)
    except FileNotFoundError:
        return 0


def _kill_when(project: Project, stage: LongStage, target: int) -> int:
    """Run the stage under `dvc repro`; SIGKILL its whole process group once its progress
    reaches `target`. Returns the progress seen at the kill."""
    command = ["dvc", "repro", "--force", "--no-run-cache", "--single-item", stage.name]
    process = subprocess.Popen(command, cwd=project.root, env=project.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    since, deadline = time.time() - 1, time.monotonic() + 300
    try:
        while (done := _progress_now(project, stage, since)) < target:
            assert process.poll() is None, f"{stage.name} ended before the kill point " \
                f"{target}:\n{process.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{stage.name}: no progress {target} in 300 s"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group ended on its own
            os.killpg(process.pid, signal.SIGKILL)
        project.logs.append(process.communicate()[0])
    return done


@pytest.mark.parametrize("stage", LONG_STAGES, ids=[s.name for s in LONG_STAGES])
def test_killed_stage_resumes_to_the_uninterrupted_outputs(project, stage):
    params = yaml.safe_load((project.root / "params.yaml").read_text())
    assert stage.progress(project.root, time.time()) == 0, "checkpoints of an earlier run"
    target = random.Random(f"{KILL_SEED}/{stage.name}").randint(1, stage.total(params) - 1)

    killed_at = _kill_when(project, stage, target)

    assert killed_at >= target
    assert stage.name in project.status(), "DVC accepted the outputs of a killed stage"
    # --force: a plain `dvc repro` would restore the outputs from DVC's run cache (this very
    # stage ran to the end before, with the same inputs) instead of running it again.
    result = project.sh("dvc", "repro", "--force", "--single-item", stage.name)
    assert f"Running stage '{stage.name}'" in result.stdout
    assert project.outs(stage.name) == project.reference[stage.name]
    if stage.resumed is not None:
        client, run = project.latest_run(stage.name)
        stage.resumed(client, run.info.run_id, killed_at)
    # The killed run's MLflow run could not end itself; the rerun closed it as KILLED.
    assert not project.runs(stage.name, "RUNNING")[1]
    assert project.runs(stage.name, "KILLED")[1]
    assert stage.progress(project.root, time.time()) == 0, "checkpoints left behind"


def test_pipeline_after_the_faults_equals_the_uninterrupted_run(project):
    # A rerun stage measured its latencies anew, so the stages that read them (evaluate,
    # promote) are stale; bringing the pipeline up to date must reproduce the metrics.
    project.sh("dvc", "repro")
    assert project.status() == {}  # nothing stale: every stage's outputs match dvc.lock
    metrics = project.root / "outputs" / MINI / "eval/metrics.json"
    assert metrics.read_bytes() == project.metrics


def test_two_runs_with_the_same_seed_give_identical_outputs_and_metrics(project):
    """Determinism on CPU: an uninterrupted second run of the teacher's training and of the
    evaluation reproduces every output file and metrics.json byte for byte. (The fault tests
    above rerun `rank_lists` whole, the concurrency test below `rabtriever`.)"""
    for stage in ("teacher", "evaluate"):
        project.sh("dvc", "repro", "--force", "--single-item", stage)
        assert project.outs(stage) == project.reference[stage]
    assert project.status() == {}
    metrics = project.root / "outputs" / MINI / "eval/metrics.json"
    assert metrics.read_bytes() == project.metrics


def test_second_repro_in_the_same_workspace_is_refused(project):
    """DVC locks the paths a running stage reads and writes: a second `dvc repro` that needs
    any of them stops at once, naming the process that holds them; the first (a full rerun of
    a training stage) ends with identical outputs."""
    command = ["dvc", "repro", "--force", "--no-run-cache", "--single-item", "rabtriever"]
    first = subprocess.Popen(command, cwd=project.root, env=project.env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for line in first.stdout:  # DVC holds the lock from here until the stage has ended
            if "Running stage 'rabtriever'" in line:
                break
        second = project.sh("dvc", "repro", check=False)
    finally:
        output = first.communicate(timeout=300)[0]
        project.logs.append(output)
    assert second.returncode != 0
    assert "is busy, it is being blocked by" in second.stderr, second.stderr
    assert f"(PID {first.pid}): " in second.stderr and "rabtriever" in second.stderr
    assert "Running stage" not in second.stdout
    assert first.returncode == 0, output[-3000:]
    assert project.outs("rabtriever") == project.reference["rabtriever"]
    # Its outputs are whole and recorded; downstream stages only see its new latencies.
    assert "rabtriever" not in project.status()


def test_prefect_server_going_away_mid_stage_keeps_the_outcome(project):
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=_free_port())
    server.start()
    # Prefect retries each API call with backoff (5 times, about a minute, by default) before
    # it gives up; no retries keep the test short and change nothing else.
    env = {**project.env, "PREFECT_API_URL": server.api_url, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    started = time.time() * 1000
    command = ["dvc", "repro", "--force", "--no-run-cache", "--single-item", "validate"]
    process = subprocess.Popen(command, cwd=project.root, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:  # the flow run has begun: take the server away
        lines.append(line)
        if "Beginning flow run" in line:
            server.stop()
            break
    lines.append(process.communicate(timeout=300)[0])
    output = "".join(lines)
    project.logs.append(output)
    assert process.returncode == 0, output[-3000:]
    assert "Prefect failed after stage validate ended" in output
    assert "validate" not in project.status()  # DVC took the stage as done
    _, run = project.latest_run("validate")
    assert run.info.start_time >= started and run.info.status == "FINISHED"


def test_no_secret_reaches_mlflow_outputs_or_logs(project, tmp_path_factory):
    """Every stage process here ran with secrets in its environment (SECRET_ENV)."""
    assert project.logs and all(SECRET not in log for log in project.logs)
    places = [project.root / "mlflow.db", project.root / "mlruns", project.root / "outputs",
              project.root / ".prefect", Path(os.environ["PREFECT_HOME"])]
    leaked = []
    for place in places:
        for path in [place] if place.is_file() else place.rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                leaked.append(str(path))
    assert not leaked

"""Operations tests against real servers on free 127.0.0.1 ports.

One project copy (the e2e helpers: bundled data from the in-repo DVC remote, the mini SciFact,
a tiny model) serves the whole session. `services` starts the Prefect server, the MLflow
server and the served deployment with `python -m flows.services start`, exactly as a user
does, and stops them with `... stop`; its finalizer fails the session if any process they
started outlives that. `pipeline_run` triggers one deployment run that later tests inspect.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from flows.services import is_zombie, process_tree
from tests.e2e.conftest import MINI, make_project_copy, run

# The stages one deployment run executes: data and model outputs, the teacher trained by two
# processes through the launcher; the rest of the pipeline is the e2e tests' business.
RUN_STAGES = ["validate", "bm25", "base_model", "teacher"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ops_repo(tmp_path_factory) -> Path:
    """A fresh-clone-like copy whose params.yaml is the shipped default; the small test
    profile is a named profile (`configs/profiles/test.yaml`) that a run selects."""
    root = make_project_copy(tmp_path_factory.mktemp("ops") / "repo")
    test_profile = (root / "params.yaml").read_text().replace("profile: cpu", "profile: test")
    (root / "configs/profiles/test.yaml").write_text(test_profile)
    run(["git", "checkout", "params.yaml"], root)
    run(["dvc", "add", "--quiet", f"data/raw/{MINI}"], root)
    commit(root, "test profile and the mini dataset")
    return root


@dataclass
class PrefectAPI:
    url: str  # .../api

    def _request(self, method: str, path: str, **kwargs) -> dict | list:
        # A server busy with a run on two shared cores may answer 503 for a moment (its
        # database is locked); a client retries that, as Prefect's own client does.
        for attempt in range(5):
            response = requests.request(method, f"{self.url}{path}", timeout=10, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(2 * (attempt + 1))
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> dict | list:
        return self._request("GET", path)

    def post(self, path: str, body: dict) -> dict | list:
        return self._request("POST", path, json=body)

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/pipeline/{name}")

    def trigger(self, deployment: str, parameters: dict) -> str:
        dep = self.deployment(deployment)
        return self.post(f"/deployments/{dep['id']}/create_flow_run",
                         {"parameters": parameters})["id"]

    def wait(self, flow_run_id: str, timeout_s: float = 400) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            flow_run = self.get(f"/flow_runs/{flow_run_id}")
            if flow_run["state_type"] in TERMINAL:
                return flow_run
            time.sleep(1)
        tail = self.logs(flow_run_id, timeout_s=0)[-3000:]
        raise AssertionError(f"flow run {flow_run_id} not finished in {timeout_s} s "
                             f"(state {flow_run['state_type']})\n{tail}")

    def task_runs(self, flow_run_id: str) -> dict[str, dict]:
        runs = self.post("/task_runs/filter",
                         {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
        return {r["name"].split("-")[0]: r for r in runs}

    def logs(self, flow_run_id: str, timeout_s: float = 30) -> str:
        """The run's log lines. A run's state reaches the server before its last log batches,
        and a late batch can land after the engine's closing line (seen once in CI: the
        pipeline's final "stages: ..." line was missing), so wait for that closing line and
        then until no new line has come for 3 s."""
        deadline = time.monotonic() + timeout_s
        count, steady_since = -1, time.monotonic()
        while True:
            lines, offset = [], 0
            while True:
                page = self.post("/logs/filter", {
                    "logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                    "limit": 200, "offset": offset})
                lines += [entry["message"] for entry in page]
                if len(page) < 200:
                    break
                offset += 200
            text = "\n".join(lines)
            if len(lines) != count:
                count, steady_since = len(lines), time.monotonic()
            finished = any(line.startswith("Finished in state") for line in lines)
            if (finished and time.monotonic() - steady_since >= 3) or (
                    time.monotonic() > deadline):
                return text
            time.sleep(1)


@dataclass
class Services:
    root: Path
    prefect: PrefectAPI
    prefect_url: str
    mlflow_url: str
    started: str  # what `start` printed
    runs: dict[str, dict] = field(default_factory=dict)


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and not is_zombie(pid)}


@pytest.fixture(scope="session")
def services(ops_repo):
    prefect_port, mlflow_port = free_port(), free_port()
    command = ["python", "-m", "flows.services", "start", "--prefect-port", str(prefect_port),
               "--mlflow-port", str(mlflow_port), "--track-via-server"]
    try:
        started = run(command, ops_repo, timeout=400).stdout
        yield Services(ops_repo, PrefectAPI(f"http://127.0.0.1:{prefect_port}/api"),
                       f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}",
                       started)
    finally:
        state = ops_repo / ".run" / "services.json"
        recorded = json.loads(state.read_text())["services"] if state.is_file() else []
        pids = set().union(set(), *(process_tree(s["pid"]) for s in recorded))
        stopped = run(["python", "-m", "flows.services", "stop"], ops_repo, check=False)
        leftovers = _alive(pids)
        for pid in leftovers:  # never leave a server behind, even when the assertion fails
            os.kill(pid, signal.SIGKILL)
        assert stopped.returncode == 0, stopped.stderr
        assert not leftovers, f"processes left after stop: {sorted(leftovers)}"
        assert not (ops_repo / ".run/services.json").exists()
        for port in (prefect_port, mlflow_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"


@pytest.fixture(scope="session")
def pipeline_run(services):
    """One run of the deployment on the test profile, started as the UI's "Run" does."""
    parameters = {"profile": "test", "dataset": MINI, "stages": RUN_STAGES,
                  "overrides": {"distributed.num_processes": 2}}
    flow_run_id = services.prefect.trigger("nightly", parameters)
    flow_run = services.prefect.wait(flow_run_id)
    return flow_run, services.prefect.logs(flow_run_id)

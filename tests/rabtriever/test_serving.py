"""`mlflow models serve -m models:/rabtriever@challenger` answers REST queries on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from components.registry import set_alias
from components.serving import log_ranker

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the model server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    raise TimeoutError(f"no answer from {url} within {timeout_s}s")


def test_registered_rabtriever_is_served_over_rest(indexed_rabtriever, toy, tiny_model_master,
                                                  tmp_path):
    import mlflow

    retriever = indexed_rabtriever
    retriever.save(tmp_path / "rab")
    name = "rabtriever-serving-test"
    with mlflow.start_run():
        info = log_ranker("rabtriever", {"base_model": tiny_model_master,
                                         "rabtriever": tmp_path / "rab"},
                          name=name, k=3, registered_model_name=name)
    set_alias(name, info.registered_model_version, "challenger")

    port = _free_port()
    log_path = tmp_path / "server.log"
    log = log_path.open("w")
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", f"models:/{name}@challenger",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
             # the server runs `uvicorn` from PATH: this interpreter's
             "PATH": os.pathsep.join([str(mlflow_cli.parent), os.environ.get("PATH", "")])},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        try:
            _wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{exc}; server log:\n{log_path.read_text()[-3000:]}") from None
        query = toy.queries["q0"]
        body = {"dataframe_split": {"columns": ["qid", "query", "candidates"],
                                    "data": [["q0", query, ["d0", "n4", "d3"]],
                                             ["q1", query, None]]}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()
    reranked = retriever.rerank({"q0": query}, {"q0": ["d0", "n4", "d3"]})["q0"]
    searched = retriever.search({"q1": query}, k=3)["q1"]
    got = {qid: [p for p in predictions if p["qid"] == qid] for qid in ("q0", "q1")}
    for qid, expected in (("q0", reranked), ("q1", searched)):
        assert [p["rank"] for p in got[qid]] == list(range(1, len(expected) + 1))
        assert [p["docid"] for p in got[qid]] == [d for d, _ in expected]
        assert [p["score"] for p in got[qid]] == pytest.approx([s for _, s in expected], abs=1e-4)

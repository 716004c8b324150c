"""Safety rules read from the code, and fail-fast on an unreachable MLflow tracking server.

- Stages write files only through `components.atomic` (a temporary path renamed on success).
- Nothing the project loads is unpickled: checkpoints and embeddings are safetensors, JSON or
  `torch.load(..., weights_only=True)`; pyfunc models are logged as code, not cloudpickles.
- Whatever the project serves or listens on binds 127.0.0.1 unless the user says otherwise.
- MLflow unreachable: the pipeline stops before it starts Prefect or any stage, naming the URI.
- The MLflow run of a killed stage (left RUNNING) is closed as KILLED by the next run.
"""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from components.settings import REPO_ROOT
from components.tracking import TrackingUnavailable, check_tracking_server
from tests.helpers import write_beir

CODE_DIRS = ["components", "flows", "scripts"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def _project_calls():
    for folder in CODE_DIRS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node, name, keywords in _calls(ast.parse(path.read_text(), str(path))):
                yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}", name, keywords


UNPICKLERS = re.compile(r"(^|\.)(pickle|cloudpickle|dill|joblib)\.loads?$|read_pickle$")


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _unpickling(calls) -> list[str]:
    problems = []
    for where, name, keywords in calls:
        if name.endswith("torch.load") and not _is_true(keywords.get("weights_only")):
            problems.append(f"{where}: {name} without weights_only=True")
        if name.endswith("np.load") and _is_true(keywords.get("allow_pickle")):
            problems.append(f"{where}: {name} with allow_pickle=True")
        if UNPICKLERS.search(name):
            problems.append(f"{where}: {name}")
        model = keywords.get("python_model")
        if isinstance(model, ast.Call) and ast.unparse(model.func) != "model_code":
            problems.append(f"{where}: python_model is an object (cloudpickled), not code")
    return problems


def test_nothing_is_unpickled():
    problems = _unpickling(_project_calls())
    assert not problems, "\n".join(problems)


def test_the_unpickling_check_catches_each_pattern():
    code = ("torch.load(p)\ntorch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\n"
            "pickle.loads(b)\npd.read_pickle(p)\nmlflow.pyfunc.log_model(python_model=M())\n"
            "torch.load(p, weights_only=True)\nnp.load(p)\n"
            "log_model(python_model=model_code(M, d))\n")
    calls = [(str(node.lineno), name, kw) for node, name, kw in _calls(ast.parse(code))]
    assert [problem.split(":")[0] for problem in _unpickling(calls)] == list("123456")


WRITERS = {"write_text", "write_bytes", "to_csv", "to_parquet", "to_json", "save_file",
           "save_pretrained", "dump", "save"}


def test_flows_write_files_only_to_atomic_temporary_paths():
    """A write in a flow goes to the `tmp` of an `atomic_path` block, or through a helper that
    is atomic itself (write_text_atomic, write_trec_run, the components' `save` methods)."""
    atomic_saves = {"index.save", "trie.save", "retriever.save", "encoder.save",
                    "documents.save", "splits.save"}  # atomic inside
    problems = []
    for path in sorted((REPO_ROOT / "flows").glob("*.py")):
        for node, name, _ in _calls(ast.parse(path.read_text())):
            if name.rsplit(".", 1)[-1] not in WRITERS or name in atomic_saves:
                continue
            if name.endswith(("write_text", "write_bytes")):
                target = node.func.value
            elif name.endswith("save_file"):
                target = node.args[1]
            elif node.args:
                target = node.args[0]
            else:
                continue  # to_json() and the like serialise to a string
            if "tmp" not in ast.unparse(target):
                problems.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not problems, "\n".join(problems)


def test_servers_and_rendezvous_bind_loopback(monkeypatch):
    wildcard = re.compile(r"""["'](0\.0\.0\.0|::)["']|--host[ =](?!127\.0\.0\.1)""")
    texts = {p: p.read_text() for d in CODE_DIRS for p in (REPO_ROOT / d).rglob("*.py")}
    texts.update({p: p.read_text() for p in [REPO_ROOT / "README.md", REPO_ROOT / "Makefile"]})
    assert not [str(p) for p, text in texts.items() if wildcard.search(text)]
    # The temporary Prefect server the pipeline starts, and DeepSpeed's rendezvous.
    from prefect.server.api.server import SubprocessASGIServer

    from components.training.engine import ensure_distributed_env

    assert SubprocessASGIServer(port=0).address.startswith("http://127.0.0.1:")
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ensure_distributed_env()
    assert os.environ["MASTER_ADDR"] == "127.0.0.1"


def _closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # closed once the socket is


def _tiny_project(root) -> None:
    """params.yaml and a 5-document dataset in `root` (set as RERANK_DISTILL_ROOT)."""
    write_beir(root / "data" / "raw" / "tiny")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"]["name"] = "tiny"
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_unreachable_tracking_server_is_named(monkeypatch):
    uri = _closed_port_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match=re.escape(f"{uri} (MLFLOW_TRACKING_URI)")):
        check_tracking_server()
    assert time.perf_counter() - started < 5


def test_pipeline_with_unreachable_mlflow_stops_before_prefect_and_stages(tmp_path):
    """`python -m flows.pipeline` on a small project: it exits 1 naming the tracking URI,
    without starting a Prefect server or any stage, and writes nothing."""
    _tiny_project(tmp_path)
    uri = _closed_port_uri()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PIPELINE_"))}
    env.update(RERANK_DISTILL_ROOT=str(tmp_path), MLFLOW_TRACKING_URI=uri,
               PYTHONPATH=str(REPO_ROOT))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "flows.pipeline", "--params",
                             str(tmp_path / "params.yaml")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) is unreachable" in output
    assert "Starting temporary server" not in output and "Running stage" not in output
    assert "Traceback" not in output
    assert time.perf_counter() - started < 60
    assert not (tmp_path / "outputs").exists()


def test_stage_with_unreachable_mlflow_fails_before_reading_data(tmp_path, monkeypatch):
    from flows.validate import validate

    _tiny_project(tmp_path)
    monkeypatch.setenv("RERANK_DISTILL_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _closed_port_uri())
    with pytest.raises(TrackingUnavailable):
        validate.fn.__wrapped__(params_path=str(tmp_path / "params.yaml"))
    assert not (tmp_path / "outputs").exists()


def test_runs_of_dead_processes_are_closed_as_killed(tmp_path):
    import mlflow

    from components.tracking import close_dead_runs, process_tags

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("x", artifact_location=tmp_path.as_uri())
        dead = subprocess.Popen(["true"])
        dead.wait()
        alive = process_tags()
        runs = {name: client.create_run(experiment, tags={"stage": "s", **tags}).info.run_id
                for name, tags in [("dead", {**alive, "pid": str(dead.pid)}), ("alive", alive),
                                   ("elsewhere", {"host": "other-host", "pid": str(dead.pid)})]}
        assert close_dead_runs(experiment, "s") == [runs["dead"]]
        status = {name: client.get_run(run).info.status for name, run in runs.items()}
        assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}
    finally:
        mlflow.set_tracking_uri(previous)


def test_a_params_edit_while_a_stage_runs_fails_the_stage(tmp_path):
    """DVC records params at the end of a stage: an edit made while it ran would be recorded
    against outputs made with the old values, so the stage must end failed (exit 1)."""
    from flows._stage import stage_flow

    params = tmp_path / "params.yaml"
    params.write_text("bm25:\n  depth: 100\n")

    @stage_flow("edited")
    def edited(params_path: str) -> str:
        Path(params_path).write_text("bm25:\n  depth: 10\n")  # a user's edit, mid-stage
        return "done"

    @stage_flow("untouched")
    def untouched(params_path: str) -> str:
        return "done"

    # .fn: the guarded body as the flow runs it, without starting a Prefect server here.
    state = edited.fn(str(params))  # positionally, as Prefect passes it
    assert state.is_failed() and "changed while the stage ran" in state.message
    assert edited.fn.outcome.failed is True
    assert untouched.fn(params_path=str(params)) == "done"
    assert untouched.fn.outcome.failed is False


def test_storage_that_refuses_a_write_fails_the_stage_with_a_message(tmp_path):
    """An output folder the user may not write (here one under /sys, which refuses even root)
    ends the stage failed, naming the path and what to check; other OS errors stay bugs."""
    import errno

    from flows._stage import stage_flow

    params = tmp_path / "params.yaml"
    params.write_text("seed: 1\n")
    target = Path("/sys/rerank-distill-outputs/run.trec")

    @stage_flow("unwritable")
    def unwritable(params_path: str) -> str:
        target.parent.mkdir(parents=True, exist_ok=True)
        return "done"

    @stage_flow("buggy")
    def buggy(params_path: str) -> str:
        raise OSError(errno.EBADF, "Bad file descriptor")

    state = unwritable.fn(params_path=str(params))
    assert state.is_failed()
    assert str(target.parent) in state.message and "may write there" in state.message
    assert "Traceback" not in state.message
    with pytest.raises(OSError, match="Bad file descriptor"):
        buggy.fn(params_path=str(params))
    assert buggy.fn.outcome.message.startswith("stage buggy crashed")

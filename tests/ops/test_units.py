"""Fast checks of the operations code: launcher commands, run settings, process bookkeeping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict

import pytest

from components.config import ParamsError, load_params
from components.profiles import write_params
from components.settings import REPO_ROOT
from components.teacher.training import StepMetrics
from flows.services import Service, is_alive, process_tree, terminate
from flows.teacher_worker import STEP_PREFIX, launch_command, launch_env, parse_step


def test_tracking_uri_from_the_environment_wins():
    code = "import flows, os; print(os.environ['MLFLOW_TRACKING_URI'])"
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "http://127.0.0.1:5999"
    env.pop("MLFLOW_TRACKING_URI")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def test_unreachable_tracking_server_fails_fast(monkeypatch):
    from components.tracking import TrackingUnavailable, check_tracking_server

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: closed
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        check_tracking_server(timeout_s=1)


def test_launch_commands_for_both_launchers(tmp_path):
    torchrun = launch_command(4, "torchrun", "params.yaml", tmp_path / "r.json", 29555)
    assert torchrun[1:] == ["-m", "torch.distributed.run", "--nproc_per_node", "4",
                            "--master_addr", "127.0.0.1", "--master_port", "29555", "-m",
                            "flows.teacher_worker", "--params", "params.yaml",
                            "--result", str(tmp_path / "r.json")]
    ds = launch_command(2, "deepspeed", "p.yaml", tmp_path / "r.json", 29556)
    assert ds[1:4] == ["-m", "deepspeed.launcher.runner", "--num_gpus"] and ds[4] == "2"
    assert ds[ds.index("--module") + 1] == "flows.teacher_worker"
    assert "--no_local_rank" in ds
    with pytest.raises(ValueError):
        launch_command(2, "mpirun", "p.yaml", tmp_path / "r.json")


def test_launch_env_drops_an_outer_rendezvous(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "1234")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = launch_env(2)
    assert "MASTER_PORT" not in env and "RANK" not in env
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO_ROOT)
    assert int(env["OMP_NUM_THREADS"]) >= 1


def test_step_lines_round_trip():
    step = StepMetrics(step=2, total_steps=3, epoch=0, loss=1.25, lr=1e-4,
                       tokens_per_s=10.0, elapsed_s=1.5)
    assert parse_step(STEP_PREFIX + json.dumps(asdict(step))) == step
    assert parse_step("[INFO] something else") is None


def test_write_params_applies_a_profile_and_overrides_keeping_comments(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    changes = write_params(target, profile="gpu",
                           overrides={"data.name": "esconv-strategy",
                                      "distributed.num_processes": 4},
                           root=REPO_ROOT)
    params = load_params(target)
    assert params.profile == "gpu" and params.data.name == "esconv-strategy"
    assert params.distributed.num_processes == 4
    assert params.teacher.max_steps == 600  # the profile's
    assert params.teacher.lr == load_params(REPO_ROOT / "params.yaml").teacher.lr  # params.yaml's
    assert "data.name: 'scifact' -> 'esconv-strategy'" in changes
    text = target.read_text()
    assert text.startswith("# Pipeline parameters:")  # params.yaml's comments kept...
    assert "  max_steps: 600             # optimizer steps\n" in text  # ...the profile's
    assert "  train_name: null " in text  # nulls stay null
    assert write_params(target, overrides={"data.name": "esconv-strategy"}) == []  # no change


def test_write_params_rejects_bad_settings_and_leaves_the_file_alone(tmp_path):
    target = tmp_path / "params.yaml"
    original = (REPO_ROOT / "params.yaml").read_text()
    target.write_text(original)
    with pytest.raises(ParamsError, match="teacher.max_steps"):
        write_params(target, overrides={"teacher.max_steps": "many"})
    with pytest.raises(ParamsError, match="no section 'nosuch'"):
        write_params(target, overrides={"nosuch.key": 1})
    with pytest.raises(ParamsError, match="data.name: dataset folder .* does not exist"):
        write_params(target, overrides={"data.name": "no-such-dataset"})
    with pytest.raises(ParamsError, match="data.test_split: .*tset.tsv does not exist"):
        write_params(target, overrides={"data.test_split": "tset"})
    with pytest.raises(ParamsError, match="known profiles: .*gpu"):
        write_params(target, profile="nosuch", root=REPO_ROOT)
    assert target.read_text() == original
    assert list(tmp_path.iterdir()) == [target]


def test_deployment_takes_its_schedule_from_params():
    from flows.deploy import deployment_kwargs

    kwargs = deployment_kwargs("params.yaml")
    schedule = load_params(REPO_ROOT / "params.yaml").schedule
    assert kwargs["name"] == schedule.deployment
    (cron,) = kwargs["schedules"]
    assert cron.cron == schedule.cron and cron.timezone == schedule.timezone
    assert kwargs["pause_on_shutdown"] is False
    assert kwargs["limit"] == 1 and kwargs["global_limit"].limit == 1


def test_cron_must_have_five_fields(tmp_path):
    with pytest.raises(ParamsError, match="schedule.cron"):
        load_params(REPO_ROOT / "params.yaml", overrides={"schedule.cron": "nightly"})


def test_terminate_stops_a_process_group_and_its_detached_children():
    # A shell (its own group) with a child in a session of its own, like a runner's flow run.
    script = "setsid sleep 300 & sleep 300"
    process = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    time.sleep(0.5)
    service = Service("demo", process.pid, "", "", ["bash", "-c", script])
    assert is_alive(service)
    tree = process_tree(process.pid)
    assert len(tree) >= 3  # bash, its sleep, the detached sleep
    terminate(service, grace_s=5)
    process.wait(timeout=5)
    time.sleep(0.2)
    assert not is_alive(service)
    assert not [pid for pid in tree if os.path.exists(f"/proc/{pid}")
                and open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z"]


def test_start_refuses_a_port_already_in_use(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "RERANK_DISTILL_ROOT": str(tmp_path)}
        (tmp_path / "params.yaml").write_text((REPO_ROOT / "params.yaml").read_text())
        result = subprocess.run([sys.executable, "-m", "flows.services", "start",
                                 "--prefect-port", str(port)], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and f"127.0.0.1:{port} is in use" in result.stderr
    assert not (tmp_path / ".run" / "services.json").exists()


def test_stop_terminates_the_recorded_ids_deployment_first(tmp_path):
    started = {name: subprocess.Popen(["sleep", f"30{i}"], start_new_session=True)
               for i, name in enumerate(["prefect", "mlflow", "serve"])}
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run/services.json").write_text(json.dumps({"services": [
        {"name": name, "pid": p.pid, "url": "", "log": "", "command": ["sleep", f"30{i}"]}
        for i, (name, p) in enumerate(started.items())]}))
    env = {**os.environ, "RERANK_DISTILL_ROOT": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "flows.services", "stop"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert [line.split()[1] for line in result.stdout.splitlines()] == [
        "serve", "mlflow", "prefect"]
    assert all(p.wait(timeout=5) == -15 for p in started.values())  # SIGTERM
    assert not (tmp_path / ".run/services.json").exists()


def test_an_unreachable_tracking_server_exits_75_and_only_that_is_retried():
    """EX_TEMPFAIL from the stage command, recognised in DVC's failure line; bad input is not
    retried."""
    from dvc.stage.exceptions import StageCmdFailedError
    from prefect.states import Failed

    from flows.pipeline import TRANSIENT_EXIT, StageError, _retry_transient

    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}  # discard port: closed
    result = subprocess.run([sys.executable, "-m", "flows.bm25"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 75, result.stderr[-2000:]
    assert "unreachable" in result.stderr and "Traceback" not in result.stderr
    assert TRANSIENT_EXIT.search(str(StageCmdFailedError("python -m flows.bm25", 75)))
    assert not TRANSIENT_EXIT.search(str(StageCmdFailedError("python -m flows.bm25", 1)))
    assert _retry_transient(None, None, Failed(data=StageError("server down", transient=True)))
    assert not _retry_transient(None, None, Failed(data=StageError("bad data")))

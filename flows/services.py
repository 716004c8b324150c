"""The local UIs and the scheduled deployment, started and stopped as one.

    python -m flows.services start     # Prefect server + MLflow UI + the served deployment
    python -m flows.services status
    python -m flows.services stop

`start` launches, each in its own process group, with its output in `.run/<name>.log`:
- `prefect`: `prefect server start` on 127.0.0.1:4200 (PREFECT_HOME=.prefect in the repo);
- `mlflow`: `mlflow server` on 127.0.0.1:5000 with one worker, over the repo's tracking store
  (`mlflow.db`, artifacts under `mlruns/`); skipped when MLFLOW_TRACKING_URI names a server.
  Its job runner (GenAI evaluation jobs, unused here) is off: it would add 8 processes;
- `serve`: `python -m flows.deploy`, the pipeline deployment with its cron schedule.
It records their process ids in `.run/services.json` as it goes and returns once each one
answers (the deployment registered), or stops what it started and exits 1 with the log tail.

`stop` sends SIGTERM to each recorded process group, and to any process that group had
started in a session of its own, the deployment first and the Prefect server last (a runner
that loses its server mid-run cannot report its runs' final states); whatever is left after
a grace period is killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
import typer

from components.config import load_params
from components.settings import repo_root

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Start/stop the Prefect server, the MLflow UI and the deployment.")
STOP_ORDER = ("serve", "mlflow", "prefect")


@dataclass
class Service:
    name: str
    pid: int  # also its process group id (started with start_new_session)
    url: str
    log: str
    command: list[str]


def state_dir() -> Path:
    return repo_root() / ".run"


def state_file() -> Path:
    return state_dir() / "services.json"


def _bin(name: str) -> str:
    """A console script of this environment (next to its python)."""
    return str(Path(sys.executable).parent / name)


def read_state() -> list[Service]:
    if not state_file().is_file():
        return []
    return [Service(**item) for item in json.loads(state_file().read_text())["services"]]


def write_state(services: list[Service]) -> None:
    state_dir().mkdir(exist_ok=True)
    tmp = state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps({"services": [asdict(s) for s in services]}, indent=2))
    tmp.replace(state_file())


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def is_alive(service: Service) -> bool:
    """The recorded process still runs (and its pid was not reused by something else)."""
    cmdline = _cmdline(service.pid)
    # A console script shows up as `python <script> args...`: compare the arguments.
    args = service.command[1:]
    return bool(cmdline) and cmdline[len(cmdline) - len(args):] == args and not is_zombie(
        service.pid)


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) for every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "(comm)": state ppid pgrp ...
        table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def process_tree(root_pid: int) -> set[int]:
    """The processes of `root_pid`'s group and all their descendants, wherever they live."""
    table = _processes()
    found = {pid for pid, (_, group) in table.items() if group == root_pid}
    found.add(root_pid)
    changed = True
    while changed:
        children = {pid for pid, (parent, _) in table.items() if parent in found} - found
        found |= children
        changed = bool(children)
    return {pid for pid in found if pid in table}


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate(service: Service, grace_s: float = 20.0) -> None:
    """SIGTERM the service's process group and descendants; SIGKILL what outlives grace_s."""
    if not is_alive(service):
        return
    pids = process_tree(service.pid)
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        alive = {pid for pid in pids if Path(f"/proc/{pid}").exists() and not is_zombie(pid)}
        if not alive:
            return
        time.sleep(0.2)
    _signal_all(pids | process_tree(service.pid), signal.SIGKILL)


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _spawn(name: str, command: list[str], env: dict[str, str], url: str) -> Service:
    log = state_dir() / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(command, cwd=repo_root(), env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    return Service(name, process.pid, url, str(log), command)


class StartFailed(RuntimeError):
    def __init__(self, service: Service, message: str):
        super().__init__(f"{service.name} {message}\n--- {service.log} ---\n{_tail(service.log)}")


def _wait(check, service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(service):
            raise StartFailed(service, "exited during start-up")
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise StartFailed(service, f"did not answer within {timeout_s:.0f} s")


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ok(url: str) -> bool:
    return requests.get(url, timeout=2).status_code == 200


def _deployment_registered(api: str, flow_name: str, name: str, since: datetime) -> bool:
    response = requests.get(f"{api}/deployments/name/{flow_name}/{name}", timeout=2)
    if response.status_code != 200:
        return False
    updated = datetime.fromisoformat(response.json()["updated"].replace("Z", "+00:00"))
    return updated >= since


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@app.command()
def start(
    prefect_port: int = typer.Option(4200, help="Prefect server port on 127.0.0.1."),
    mlflow_port: int = typer.Option(5000, help="MLflow UI port on 127.0.0.1."),
    serve: bool = typer.Option(True, help="Also serve the scheduled pipeline deployment."),
    track_via_server: bool = typer.Option(
        False, help="Served runs log through the MLflow server instead of to mlflow.db directly."),
    params: str = typer.Option("params.yaml", help="Parameters file (schedule section)."),
    timeout: float = typer.Option(120, help="Seconds each service may take to answer."),
) -> None:
    """Start the Prefect server, the MLflow UI and the deployment; record their ids."""
    running = [s for s in read_state() if is_alive(s)]
    if running:
        names = ", ".join(f"{s.name} (pid {s.pid})" for s in running)
        typer.echo(f"already running: {names}; `python -m flows.services stop` first", err=True)
        raise typer.Exit(1)
    schedule = load_params(repo_root() / params).schedule  # a bad params file fails here
    for port in (prefect_port, mlflow_port):
        if _port_in_use(port):  # else a foreign server there would pass our health checks
            typer.echo(f"127.0.0.1:{port} is in use; pick another port (--prefect-port, "
                       "--mlflow-port)", err=True)
            raise typer.Exit(1)
    state_dir().mkdir(exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    services: list[Service] = []
    try:
        prefect_url = f"http://127.0.0.1:{prefect_port}"
        prefect = _spawn("prefect", [_bin("prefect"), "server", "start", "--host", "127.0.0.1",
                                     "--port", str(prefect_port)], base_env, prefect_url)
        services.append(prefect)
        write_state(services)

        tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
        mlflow_url = ""
        if tracking_uri.startswith(("http://", "https://")):
            typer.echo(f"MLflow: using the tracking server at {tracking_uri}")
        else:
            mlflow_url = f"http://127.0.0.1:{mlflow_port}"
            mlflow = _spawn("mlflow", [
                _bin("mlflow"), "server", "--backend-store-uri", tracking_uri,
                "--artifacts-destination", (repo_root() / "mlruns").as_uri(),
                "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
            ], {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, mlflow_url)
            services.append(mlflow)
            write_state(services)

        _wait(lambda: _ok(f"{prefect_url}/api/health"), prefect, timeout)
        if mlflow_url:
            _wait(lambda: _ok(f"{mlflow_url}/health"), mlflow, timeout)
        typer.echo(f"Prefect UI: {prefect_url}  (PREFECT_HOME={base_env['PREFECT_HOME']})")
        if mlflow_url:
            typer.echo(f"MLflow UI:  {mlflow_url}  (store {tracking_uri})")

        if serve:
            serve_env = {**base_env, "PREFECT_API_URL": f"{prefect_url}/api"}
            if track_via_server and mlflow_url:
                serve_env["MLFLOW_TRACKING_URI"] = mlflow_url
            since = datetime.now(UTC).replace(microsecond=0)
            deploy = _spawn("serve", [sys.executable, "-m", "flows.deploy", "--params", params],
                            serve_env, f"{prefect_url}/deployments")
            services.append(deploy)
            write_state(services)
            _wait(lambda: _deployment_registered(f"{prefect_url}/api", "pipeline",
                                                 schedule.deployment, since), deploy, timeout)
            typer.echo(f"Deployment: pipeline/{schedule.deployment}, cron '{schedule.cron}' "
                       f"({schedule.timezone}), served by pid {deploy.pid}")
    except (StartFailed, OSError) as exc:
        typer.echo(f"start failed: {exc}", err=True)
        _stop(services)
        raise typer.Exit(1) from None
    typer.echo(f"ids recorded in {state_file()}; stop with `python -m flows.services stop`")


def _stop(services: list[Service], report: bool = False) -> None:
    """Terminate in STOP_ORDER (the deployment first, the server last); forget the ids."""
    by_name = {s.name: s for s in services}
    for name in STOP_ORDER:
        if name in by_name:
            service = by_name[name]
            if report:
                typer.echo(f"stopping {name} (pid {service.pid})"
                           + ("" if is_alive(service) else ": not running"))
            terminate(service)
    if state_file().is_file():
        state_file().unlink()


@app.command()
def stop() -> None:
    """SIGTERM the recorded services: the deployment first, the Prefect server last."""
    services = read_state()
    if not services:
        typer.echo("nothing recorded in .run/services.json")
        return
    _stop(services, report=True)


@app.command()
def status() -> None:
    """The recorded services, their ids, whether they run, and their URLs."""
    services = read_state()
    if not services:
        typer.echo("not started")
        raise typer.Exit(3)
    for service in services:
        state = "running" if is_alive(service) else "not running"
        typer.echo(f"{service.name:8s} pid {service.pid:<8d} {state:12s} {service.url}")
    if not all(is_alive(s) for s in services):
        raise typer.Exit(3)


if __name__ == "__main__":
    app()

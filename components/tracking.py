"""MLflow helpers: one experiment for the pipeline, one run per stage.

The tracking URI always comes from MLFLOW_TRACKING_URI (set by
`components.settings.configure_environment` to a sqlite file in the repo unless the user
points it at a server). A pipeline run is an MLflow parent run; stage runs started while
PIPELINE_MLFLOW_RUN_ID is set become its children, so the UI shows one pipeline run with
its stages.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from components.settings import repo_root

PARENT_RUN_ENV = "PIPELINE_MLFLOW_RUN_ID"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def flatten(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or repo_root(),
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_data_hash(dataset_dir: Path) -> str:
    """The md5 DVC recorded for a tracked data folder (`<dir>.dvc`), or 'untracked'."""
    dvc_file = dataset_dir.with_name(dataset_dir.name + ".dvc")
    if not dvc_file.is_file():
        return "untracked"
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return str(outs[0].get("md5", "unknown"))


def check_tracking_server(timeout_s: float = 5.0) -> None:
    """Fail fast, before heavy work, when a remote tracking server does not answer."""
    import requests

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server at {uri} (MLFLOW_TRACKING_URI) is unreachable: {exc}. "
            "Start it, or unset MLFLOW_TRACKING_URI to use the repo's sqlite store."
        ) from None


def ensure_experiment(name: str) -> str:
    """Create the experiment with its artifacts under the repo's mlruns/ if needed."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if not os.environ["MLFLOW_TRACKING_URI"].startswith(("http://", "https://")):
            location = (repo_root() / "mlruns" / name).as_uri()
        return mlflow.create_experiment(name, artifact_location=location)
    return experiment.experiment_id


def close_dead_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark KILLED the runs of `stage` still RUNNING whose process on this host is gone.

    A stage killed with SIGKILL cannot end its MLflow run, which would then read RUNNING for
    ever; the next run of the stage closes it. Runs started on other hosts are left alone.
    """
    import psutil
    from mlflow import MlflowClient

    client = MlflowClient()
    query = f"tags.stage = '{stage}' and attributes.status = 'RUNNING'"
    closed = []
    for run in client.search_runs([experiment_id], query):
        tags = run.data.tags
        if tags.get("host") != socket.gethostname() or not tags.get("pid", "").isdigit():
            continue
        if psutil.pid_exists(int(tags["pid"])):
            continue
        client.set_tag(run.info.run_id, "ended", "its process died; closed by a later run")
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def process_tags() -> dict[str, str]:
    """Which process a run belongs to, so a later run can tell a dead one (close_dead_runs)."""
    return {"host": socket.gethostname(), "pid": str(os.getpid())}


@contextmanager
def stage_run(stage: str, experiment: str, params: dict[str, Any], dataset_dir: Path,
              extra_tags: dict[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run for one stage, tagged with git commit and the data's DVC hash."""
    import mlflow

    check_tracking_server()
    experiment_id = ensure_experiment(experiment)
    close_dead_runs(experiment_id, stage)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags = {
        **process_tags(),
        "stage": stage,
        "dataset": dataset_dir.name,
        "git_commit": git_commit(),
        "data_dvc_md5": dvc_data_hash(dataset_dir),
        **(extra_tags or {}),
    }
    if parent:
        tags["pipeline_run_id"] = parent
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent,
                          tags=tags) as run:
        mlflow.log_params(flatten(params))
        log_dataset(dataset_dir, tags["data_dvc_md5"])
        yield run


def log_dataset(dataset_dir: Path, digest: str) -> None:
    """Record the data folder as the run's input dataset (MLflow's Datasets tab and search),
    named after the folder, with DVC's md5 as its digest and the local path as its source."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # two registered local sources; both read a plain path
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(dataset_dir).resolve()))
    mlflow.log_input(MetaDataset(source, name=Path(dataset_dir).name, digest=digest[:36]))

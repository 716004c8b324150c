"""The whole pipeline as one Prefect flow run: every DVC stage in the fixed order.

Each stage is a Prefect task that runs `dvc repro --single-item <stage>`, so DVC's cache
decides what actually runs (unchanged stages are skipped) and `dvc.lock` stays the record
of what was produced. The flow opens an MLflow parent run; stage processes see its id in
PIPELINE_MLFLOW_RUN_ID and log as its children.

Run: `python -m flows.pipeline` (starts a temporary Prefect server when PREFECT_API_URL is
unset, shared by the stage processes). `flows.deploy` serves this flow as the scheduled
deployment; its run parameters (profile, dataset, overrides, stages) can be set in the UI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import typer
import yaml
from prefect import flow, get_run_logger, task

from components import tracking
from components.config import Params, ParamsError, load_params, require_dataset
from components.layout import Layout
from components.profiles import write_params
from components.settings import repo_root
from components.tracking import TrackingUnavailable
from flows._stage import EXIT_TRANSIENT


def stage_order() -> list[str]:
    """Stages in the order dvc.yaml lists them (which is their dependency order)."""
    return list(yaml.safe_load((repo_root() / "dvc.yaml").read_text())["stages"])


class StageError(RuntimeError):
    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


def _stage_env() -> dict[str, str]:
    # The stages' `dvc` and `python` are this interpreter's, activated or not.
    env = os.environ.copy()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def stage_is_stale(stage: str) -> bool:
    """Will `dvc repro --single-item <stage>` run it? DVC's own answer (`dvc status --json`)."""
    result = subprocess.run(["dvc", "status", "--json", stage], cwd=repo_root(), text=True,
                            capture_output=True, env=_stage_env())
    if result.returncode != 0:
        return True  # DVC cannot tell (e.g. a missing output): repro decides, and runs it
    return bool(json.loads(result.stdout or "{}"))


def _retry_transient(task, task_run, state) -> bool:
    """Retry a stage only when it failed for a reason that may pass (exit 75, EX_TEMPFAIL)."""
    try:
        state.result()
    except StageError as exc:
        return exc.transient
    except Exception:
        return False
    return False


# DVC reports a failed stage command as "failed to run: <cmd>, exited with <status>".
TRANSIENT_EXIT = re.compile(rf"exited with {EXIT_TRANSIENT}\b")


@task(name="stage", retries=2, retry_delay_seconds=[15, 60], retry_condition_fn=_retry_transient)
def run_stage(stage: str) -> str:
    """Run one DVC stage; 'ran' or 'skipped', as DVC's status said before the run. Streams its
    output into the logs; retried (twice, after 15 s and 60 s) only on a transient failure."""
    logger = get_run_logger()
    stale = stage_is_stale(stage)
    command = ["dvc", "repro", "--single-item", stage]
    logger.info("$ %s", " ".join(command))
    process = subprocess.Popen(command, cwd=repo_root(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=_stage_env())
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        logger.info(line.rstrip())
    if process.wait() != 0:
        tail = "\n".join(lines[-25:])
        transient = any(TRANSIENT_EXIT.search(line) for line in lines[-25:])
        raise StageError(f"stage {stage} failed (exit {process.returncode}"
                         f"{', transient' if transient else ''}):\n{tail}", transient)
    return "ran" if stale else "skipped"


def apply_run_settings(params_path: str, profile: str, dataset: str,
                       overrides: dict[str, Any] | None) -> None:
    """Write a run's profile/dataset/overrides into the params file DVC reads."""
    overrides = dict(overrides or {})
    if dataset:
        overrides["data.name"] = dataset
    if not profile and not overrides:
        return
    target = repo_root() / params_path
    changes = write_params(target, profile=profile, overrides=overrides)
    logger = get_run_logger()
    if not changes:
        logger.info("%s already holds this run's settings", params_path)
    for change in changes:
        logger.info("%s: %s", params_path, change)
    if changes:
        logger.warning("%s now holds this run's settings; later runs (and `dvc repro`) use "
                       "them until it is changed back", params_path)


# The reports a pipeline run shows in the Prefect UI (its Artifacts tab): the run's dataset's
# current files, whichever stages ran, so a run that failed still shows how far it got.
REPORTS = {
    "validation": ("validation/report.md", "Validation report (Great Expectations)"),
    "results": ("eval/results.md", "Results table: metrics, paired tests, gain kept"),
    "promotion": ("promotion/decisions.json", "Promotion decisions on the held-out dev split"),
}


def decisions_markdown(decisions: list[dict]) -> str:
    rows = [f"| {d['model']} | {d['verdict']} | {d.get('challenger_version', '—')} | "
            f"{d.get('champion_version') or '—'} | {d.get('split', '')} "
            f"({d.get('split_queries', '?')} q) | {d.get('reason', '')} |".replace("\n", " ")
            for d in decisions]
    return "\n".join(["# Promotion decisions", "",
                      "| model | verdict | challenger | champion | judged on | reason |",
                      "|---|---|---|---|---|---|", *rows]) + "\n"


def publish_reports(dataset: str) -> list[str]:
    """Markdown artifacts of the dataset's reports, linked from this flow run; their keys."""
    from prefect.artifacts import create_markdown_artifact

    root = Layout(dataset).root
    slug = re.sub(r"[^a-z0-9-]+", "-", dataset.lower()).strip("-")
    published = []
    for name, (relative, description) in REPORTS.items():
        path = root / relative
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            text = decisions_markdown(json.loads(text))
        key = f"{name}-{slug}"
        create_markdown_artifact(markdown=text, key=key, description=description)
        published.append(key)
    return published


def preflight(params_path: str) -> Params:
    """What must hold before any stage runs: valid params, the dataset folder, a reachable
    MLflow tracking server. Each failure raises with the file, key or URI named."""
    params = load_params(params_path)
    require_dataset(params, params_path)
    tracking.check_tracking_server()
    return params


@flow(name="pipeline", log_prints=True)
def pipeline(params_path: str = "params.yaml", profile: str = "", dataset: str = "",
             overrides: dict[str, Any] | None = None,
             stages: list[str] | None = None) -> dict[str, str]:
    """Every DVC stage in order, each skipped by DVC when nothing it depends on changed.

    Args:
        params_path: the parameters file (DVC's stages read params.yaml).
        profile: a profile in configs/profiles/ (e.g. "gpu") or a path: its keys are written
            over the parameters file before the run. Empty: the file as it is.
        dataset: a dataset folder under data.root (sets data.name). Empty: as in the file.
        overrides: dotted keys and values written into the file, e.g. {"bm25.k1": 1.2}.
        stages: run only these stages (in pipeline order). Empty: all of them.
    """
    order = stage_order()
    unknown = sorted(set(stages or []) - set(order))
    if unknown:
        raise ParamsError(f"unknown stage(s) {unknown}; the stages are {order}")
    apply_run_settings(params_path, profile, dataset, overrides)
    params = preflight(str(repo_root() / params_path))
    experiment_id = tracking.ensure_experiment(params.tracking.experiment)
    tracking.close_dead_runs(experiment_id, "pipeline")
    outcomes: dict[str, str] = {}
    tags = {"stage": "pipeline", "dataset": params.data.name, "profile": params.profile,
            "git_commit": tracking.git_commit(), **tracking.process_tags()}
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline", tags=tags) as run:
        mlflow.log_params(tracking.flatten(params.model_dump()))
        os.environ[tracking.PARENT_RUN_ENV] = run.info.run_id
        try:
            for stage in order:
                if stages and stage not in stages:
                    continue
                outcomes[stage] = run_stage.with_options(name=stage)(stage)
                mlflow.set_tag(f"stage.{stage}", outcomes[stage])
        finally:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
            try:
                publish_reports(params.data.name)
            except Exception as exc:  # a report the UI cannot show must not hide a stage's error
                get_run_logger().warning("reports not published as artifacts: %r", exc)
    print("stages: " + ", ".join(f"{s}={o}" for s, o in outcomes.items()))
    return outcomes


def main(params: str = typer.Option("params.yaml", help="Parameters file.")) -> None:
    try:  # before the Prefect server starts: a bad setting costs seconds, not a server start
        preflight(params)
    except (ParamsError, TrackingUnavailable) as exc:
        typer.echo(f"pipeline failed: {exc}", err=True)
        sys.exit(1)
    server = None
    if not os.environ.get("PREFECT_API_URL"):
        # One temporary server for the flow and all stage processes (instead of each stage
        # process starting its own, ~10 s each).
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        server.start()
        os.environ["PREFECT_API_URL"] = server.api_url
    try:
        state = pipeline(params_path=params, return_state=True)
    finally:
        if server is not None:
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)  # send the last log lines while the server is up
            server.stop()
    if state.is_failed():
        typer.echo(f"pipeline failed: {state.message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    typer.run(main)

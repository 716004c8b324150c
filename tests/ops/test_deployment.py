"""The scheduled deployment on a real Prefect server, tracked by a real MLflow server."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import datetime

import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.settings import REPO_ROOT
from tests.e2e.conftest import MINI, run
from tests.ops.conftest import RUN_STAGES

pytestmark = pytest.mark.slow


def test_start_reports_the_uis_and_status_sees_three_services(services):
    assert f"Prefect UI: {services.prefect_url}" in services.started
    assert f"MLflow UI:  {services.mlflow_url}" in services.started
    assert "Deployment: pipeline/nightly, cron '0 2 * * *' (UTC)" in services.started
    status = run(["python", "-m", "flows.services", "status"], services.root).stdout
    assert [line.split()[0] for line in status.splitlines()] == ["prefect", "mlflow", "serve"]
    assert status.count("running") == 3


def test_deployment_has_the_cron_schedule_from_params_and_one_run_at_a_time(services):
    """(Checked before any run: the scheduled runs below come from the server's scheduler.)"""
    params = yaml.safe_load((services.root / "params.yaml").read_text())["schedule"]
    deployment = services.prefect.deployment(params["deployment"])
    (schedule,) = deployment["schedules"]
    assert schedule["active"] and not deployment["paused"]
    assert schedule["schedule"]["cron"] == params["cron"] == "0 2 * * *"
    assert schedule["schedule"]["timezone"] == "UTC"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["entrypoint"] == "flows.pipeline.pipeline"
    assert {"profile", "dataset", "overrides", "stages"} <= set(
        deployment["parameter_openapi_schema"]["properties"])  # the UI's run form


def test_server_schedules_nightly_runs(pipeline_run, services):
    """The scheduler service fills in the coming runs (every 60 s; by now it has run)."""
    deployment = services.prefect.deployment("nightly")
    deadline = time.monotonic() + 90
    while True:
        scheduled = services.prefect.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}, "limit": 5})
        if scheduled or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert scheduled, "the server created no scheduled runs"
    assert all(r["expected_start_time"][11:16] == "02:00" for r in scheduled)


def test_triggered_run_completes_with_each_stage_as_a_task_run(pipeline_run, services):
    flow_run, logs = pipeline_run
    assert flow_run["state_type"] == "COMPLETED", logs[-4000:]
    assert flow_run["parameters"]["profile"] == "test"
    tasks = services.prefect.task_runs(flow_run["id"])
    assert set(tasks) == set(RUN_STAGES)
    assert all(t["state_type"] == "COMPLETED" for t in tasks.values())
    for stage in RUN_STAGES:  # each stage's own output is in the run's logs
        assert f"$ dvc repro --single-item {stage}" in logs
        assert f"Running stage '{stage}'" in logs
    assert "params.yaml: profile: 'cpu' -> 'test'" in logs
    assert "torch.distributed.run --nproc_per_node 2" in logs  # distributed.num_processes
    assert "stages: validate=ran, bm25=ran, base_model=ran, teacher=ran" in logs


def test_the_run_shows_its_reports_as_markdown_artifacts(pipeline_run, services):
    """The validation report (the stages this run ran write no results or decisions yet) is a
    markdown artifact of the pipeline's flow run, under a per-dataset key."""
    flow_run, _ = pipeline_run
    artifacts = services.prefect.post(
        "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}})
    by_key = {a["key"]: a for a in artifacts}
    assert set(by_key) == {f"validation-{MINI}"}, list(by_key)
    report = by_key[f"validation-{MINI}"]
    assert report["type"] == "markdown" and f"Data validation: {MINI}" in report["data"]


def test_run_is_tracked_through_the_mlflow_server(pipeline_run, services):
    client = MlflowClient(tracking_uri=services.mlflow_url)
    experiment = client.get_experiment_by_name("rerank-distill")
    # Created over HTTP (a direct sqlite client would have set file://.../mlruns), with the
    # artifacts proxied by the server into the repo's mlruns/.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    assert list((services.root / "mlruns").rglob("MLmodel"))
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    assert parent.data.tags["profile"] == "test" and parent.data.tags["dataset"] == MINI
    children = {r.data.tags["stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(RUN_STAGES)
    teacher = children["teacher"]
    assert teacher.data.params["distributed.num_processes"] == "2"
    losses = client.get_metric_history(teacher.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3]  # rank 0's steps, relayed by the stage
    teacher = client.get_model_version_by_alias(f"{MINI}.teacher-reranker", "challenger")
    assert teacher.version == "1"


def test_dvc_sees_the_run_outputs_as_up_to_date(pipeline_run, services):
    root = services.root
    assert json.loads(run(["dvc", "status", "--json", *RUN_STAGES], root).stdout) == {}
    repro = run(["dvc", "repro", "teacher"], root)  # the stage and everything upstream
    assert "Running stage" not in repro.stdout


def test_later_runs_skip_every_unchanged_stage_one_run_at_a_time(pipeline_run, services):
    """Two runs started together: both skip everything, and the second waits for the first."""
    ids = [services.prefect.trigger("nightly", {"stages": RUN_STAGES}) for _ in range(2)]
    runs = [services.prefect.wait(flow_run_id) for flow_run_id in ids]
    for flow_run in runs:
        logs = services.prefect.logs(flow_run["id"])
        assert flow_run["state_type"] == "COMPLETED", logs[-3000:]
        assert "stages: " + ", ".join(f"{s}=skipped" for s in RUN_STAGES) in logs
    (start_a, end_a), (start_b, _) = sorted(
        (_when(r["start_time"]), _when(r["end_time"])) for r in runs)
    assert start_b >= end_a, "the two runs overlapped"


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_failed_validation_is_a_failed_run_whose_logs_name_the_report(pipeline_run, services):
    root = services.root
    params_file = root / "params.yaml"
    saved = params_file.read_text()
    broken = root / "data/raw/scifact-broken"
    shutil.copytree(root / "data/raw" / MINI, broken)
    with open(broken / "corpus.jsonl", "a") as out:  # a duplicate document id
        out.write((broken / "corpus.jsonl").read_text().splitlines()[0] + "\n")
    try:
        flow_run_id = services.prefect.trigger(
            "nightly", {"dataset": "scifact-broken", "stages": ["validate", "bm25"]})
        flow_run = services.prefect.wait(flow_run_id)
        logs = services.prefect.logs(flow_run_id)
        tasks = services.prefect.task_runs(flow_run_id)
    finally:
        params_file.write_text(saved)
        shutil.rmtree(broken)
    assert flow_run["state_type"] == "FAILED", logs[-3000:]
    assert tasks["validate"]["state_type"] == "FAILED" and "bm25" not in tasks
    assert "corpus.id_unique" in logs
    assert f"report: {root}/outputs/scifact-broken/validation/report.md" in logs
    assert "stage validate failed" in flow_run["state"]["message"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_headless_chromium_renders_the_deployment_page(pipeline_run, services, tmp_path):
    deployment = services.prefect.deployment("nightly")
    out = tmp_path / "deployment.png"
    subprocess.run([str(REPO_ROOT / "scripts/screenshot_ui.sh"),
                    f"{services.prefect_url}/deployments/deployment/{deployment['id']}",
                    str(out)], check=True, timeout=120)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000

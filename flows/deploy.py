"""Serve the whole pipeline as a scheduled Prefect deployment.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.deploy

(`python -m flows.services start` starts the server, the MLflow UI and this process.) The
deployment `pipeline/<schedule.deployment>` runs `flows.pipeline` on the cron schedule in
params.yaml (`schedule.cron`, `schedule.timezone`); runs started from the UI take the flow's
parameters (profile, dataset, overrides, stages). Flow runs execute as subprocesses of this
process, in the repository, so they run the DVC pipeline of this workspace.

At most one run at a time (runner limit and deployment concurrency limit of 1): two
`dvc repro` in one workspace would fight over DVC's lock, so a run that comes due while
another is going waits for it. The schedule stays active when this process stops
(`pause_on_shutdown=False`): runs that come due meanwhile wait as Scheduled/Late until it is
served again.
"""

from __future__ import annotations

import os
import sys

import typer

from components.config import load_params
from components.settings import repo_root
from flows.pipeline import pipeline


def deployment_kwargs(params_path: str = "params.yaml") -> dict:
    """What `pipeline.serve` gets: the schedule from params.yaml and a concurrency limit of 1."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    params = load_params(repo_root() / params_path)
    schedule = params.schedule
    return dict(
        name=schedule.deployment,
        schedules=[Cron(schedule.cron, timezone=schedule.timezone)],
        parameters={"params_path": params_path},
        description=f"The DVC pipeline of {repo_root()} ({schedule.cron}, {schedule.timezone}); "
                    "unchanged stages are skipped.",
        tags=["dvc", "pipeline"],
        limit=1,
        global_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        pause_on_shutdown=False,
    )


def main(params: str = typer.Option("params.yaml", help="Parameters file (schedule section).")
         ) -> None:
    if not os.environ.get("PREFECT_API_URL"):
        # Without a server, Prefect would start a temporary one that vanishes with this
        # process, taking the deployment and its schedule with it.
        typer.echo("PREFECT_API_URL is not set: start the server first "
                   "(python -m flows.services start)", err=True)
        sys.exit(2)
    from prefect.flows import EntrypointType

    os.chdir(repo_root())  # flow runs start here: `dvc repro` needs the repository
    pipeline.serve(entrypoint_type=EntrypointType.MODULE_PATH, **deployment_kwargs(params))


if __name__ == "__main__":
    typer.run(main)

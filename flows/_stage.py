"""What every stage flow shares: expected-failure handling and the command line.

Expected failures (bad params, bad data, a failed validation, an unreachable tracking
server) end the flow run in a Failed state whose message says what went wrong; the
command exits 1 with that message and no traceback. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from prefect import flow, get_run_logger
from prefect.states import Failed

from components.config import ParamsError
from components.data.beir import DataFormatError
from components.tracking import TrackingUnavailable


class StageFailed(RuntimeError):
    """A stage found a problem it can explain (e.g. validation failed)."""


EXPECTED_FAILURES = (StageFailed, ParamsError, DataFormatError, FileNotFoundError,
                     TrackingUnavailable)


def stage_flow(name: str) -> Callable:
    """Decorate a stage body: a Prefect flow whose expected failures become Failed states."""

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def guarded(*args, **kwargs):
            try:
                return body(*args, **kwargs)
            except EXPECTED_FAILURES as exc:
                message = f"stage {name} failed: {exc}"
                get_run_logger().error(message)
                return Failed(message=message)

        return flow(name=name, log_prints=True)(guarded)

    return decorate


def run_cli(stage_flow_fn: Callable) -> None:
    """`python -m flows.<stage> [--params params.yaml]`: run the flow, exit 1 on failure."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def main(params: Path = typer.Option(Path("params.yaml"), help="Parameters file.")) -> None:
        state = stage_flow_fn(params_path=str(params), return_state=True)
        if state.is_failed():
            typer.echo(state.message or f"{stage_flow_fn.name} failed", err=True)
            sys.exit(1)

    app()

"""What every stage flow shares: expected-failure handling and the command line.

Expected failures (bad params, bad data, a failed validation, an unreachable tracking
server, storage that refuses a write: no permission, read-only, full) end the flow run in a
Failed state whose message says what went wrong; the command exits 1 with that message and no
traceback (75, EX_TEMPFAIL, when it may pass on a retry: an unreachable tracking server). Anything
else is a bug and keeps its traceback.

Prefect only orchestrates: a stage whose body has finished keeps its outcome when the Prefect
API goes away before the flow run's final state is reported. Its outputs are on disk and its
MLflow run is closed by then, so the command exits as the body did (0 on success, which lets
DVC record the stage in dvc.lock) and says that Prefect missed the end of the run.

A stage whose params file changed while it ran fails: DVC would otherwise record the new values
in dvc.lock against outputs made with the old ones, and call the stage up to date.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer
from prefect import flow, get_run_logger
from prefect.exceptions import MissingContextError
from prefect.states import Failed

from components.config import ParamsError
from components.data.beir import DataFormatError
from components.data.judgements import STAGE_ENV
from components.tracking import TrackingUnavailable


class StageFailed(RuntimeError):
    """A stage found a problem it can explain (e.g. validation failed)."""


EXPECTED_FAILURES = (StageFailed, ParamsError, DataFormatError, FileNotFoundError,
                     TrackingUnavailable)
# Failures that may pass on their own (the tracking server was down): the command exits with
# EX_TEMPFAIL instead of 1, so the pipeline retries the stage; bad data or params never are.
TRANSIENT_FAILURES = (TrackingUnavailable,)
EXIT_TRANSIENT = 75


# The machine's storage refused a write or a read (a read-only or full disk, a folder the user
# may not write, e.g. outputs/ or mlruns/ made by another user): not a bug, a message.
STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def storage_message(exc: OSError) -> str:
    where = f" {exc.filename!r}" if exc.filename else ""
    hint = ("free some space or move outputs/ (the DVC cache, mlruns/) to a larger disk"
            if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check that this user may write there (owner and mode of the folder) and "
                 "that the disk is not mounted read-only")
    return f"cannot use{where}: {exc.strerror or exc}; {hint}"


@dataclass
class BodyOutcome:
    """How the stage body ended in this process (None until it has): kept outside Prefect."""

    failed: bool | None = None
    message: str = ""
    transient: bool = False


def _log_error(message: str) -> None:
    try:
        get_run_logger().error(message)
    except MissingContextError:  # the body called as a plain function (tests)
        print(message, file=sys.stderr)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def stage_flow(name: str) -> Callable:
    """Decorate a stage body: a Prefect flow whose expected failures become Failed states."""

    def decorate(body: Callable) -> Callable:
        outcome = BodyOutcome()

        @functools.wraps(body)
        def guarded(*args, **kwargs):
            outcome.failed, outcome.message, outcome.transient = None, "", False
            os.environ[STAGE_ENV] = name  # who reads which judgements (components/data/judgements)
            # Prefect passes parameters positionally where the signature allows.
            bound = inspect.signature(body).bind(*args, **kwargs)
            bound.apply_defaults()
            params_file = Path(bound.arguments.get("params_path", "params.yaml"))
            started_with = _digest(params_file)
            try:
                result = body(*args, **kwargs)
                if _digest(params_file) != started_with:
                    raise StageFailed(
                        f"{params_file} changed while the stage ran; its outputs were made with "
                        "the values it started with, so it ends failed and DVC records nothing: "
                        "run it again")
            except (*EXPECTED_FAILURES, OSError) as exc:
                if isinstance(exc, OSError) and not isinstance(exc, EXPECTED_FAILURES):
                    if exc.errno not in STORAGE_ERRNOS:
                        outcome.failed, outcome.message = True, f"stage {name} crashed: {exc!r}"
                        raise
                    exc = storage_message(exc)
                message = f"stage {name} failed: {exc}"
                outcome.failed, outcome.message = True, message
                outcome.transient = isinstance(exc, TRANSIENT_FAILURES)
                _log_error(message)
                return Failed(message=message)
            except BaseException as exc:
                outcome.failed, outcome.message = True, f"stage {name} crashed: {exc!r}"
                raise
            outcome.failed = False
            return result

        guarded.outcome = outcome
        return flow(name=name, log_prints=True)(guarded)

    return decorate


def run_cli(stage_flow_fn: Callable) -> None:
    """`python -m flows.<stage> [--params params.yaml]`: run the flow, exit 1 on failure."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.command()
    def main(params: Path = typer.Option(Path("params.yaml"), help="Parameters file.")) -> None:
        outcome: BodyOutcome = stage_flow_fn.fn.outcome
        try:
            state = stage_flow_fn(params_path=str(params), return_state=True)
            failed, message = state.is_failed(), state.message
        except Exception as exc:
            if outcome.failed is None:  # the body never ended: a real crash
                raise
            typer.echo(f"warning: Prefect failed after stage {stage_flow_fn.name} ended "
                       f"({type(exc).__name__}: {exc}); the stage's outputs and MLflow run are "
                       "recorded, its Prefect flow run state is not", err=True)
            failed, message = outcome.failed, outcome.message
        if failed:
            typer.echo(message or f"{stage_flow_fn.name} failed", err=True)
            sys.exit(EXIT_TRANSIENT if outcome.transient else 1)

    app()

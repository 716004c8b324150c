"""`python -m flows.register`: rebuild this dataset's registry entries from the DVC outputs.

The model stages register what they train as they run, into the MLflow store of the machine
that ran them. On another machine `dvc pull` brings every output back but not that registry,
so `models:/<dataset>.<model>@champion` does not exist there. This command logs each model
stage's pulled output as a new version of `<data.name>.<model>` (alias `challenger`), exactly
as the stage would have, then replays the `promote` decisions on the frozen dev split:

    dvc pull && python -m flows.register          # every model in promote.models
    python -m flows.register --model rabtriever --no-promote

Not a DVC stage: it writes only to MLflow, and `promote` rewrites its own DVC output
(`outputs/<dataset>/promotion/decisions.json`) as it always does. A model whose stage skipped
this dataset on purpose (its summary says why) is left out, as `promote` leaves it out.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import typer

from components import tracking
from components.config import load_params
from components.layout import Layout
from flows import dgr, rabtriever, teacher
from flows._stage import StageFailed, stage_flow
from flows.promote import promote_flow, skipped_on_this_dataset


def _outputs(layout: Layout) -> dict[str, tuple[list[Path], Callable]]:
    """Model -> (the stage outputs its registration reads, the stage's register function)."""
    out = layout.root
    return {
        teacher.MODEL: ([layout.teacher_model], teacher.register),
        rabtriever.MODEL: ([layout.teacher_model, out / "rabtriever"], rabtriever.register),
        dgr.MODEL: ([out / "dgr" / "dgr_model", out / "dgr" / "trie.json"], dgr.register),
    }


@stage_flow("register")
def register_flow(params_path: str = "params.yaml", models: list[str] | None = None
                  ) -> dict[str, str]:
    """Register the pulled outputs of `models` (default `promote.models`); model -> version."""
    params = load_params(params_path)
    layout = Layout(params.data.name)
    known = _outputs(layout)
    models = models or params.promote.models
    unknown = sorted(set(models) - set(known))
    if unknown:
        raise StageFailed(f"unknown model(s) {unknown}; known: {sorted(known)}")
    versions = {}
    section = {"data": params.data.model_dump(), "promote": params.promote.model_dump()}
    with tracking.stage_run("register", params.tracking.experiment, section,
                            params.data.dataset_dir()):
        for model in models:
            reason = skipped_on_this_dataset(layout, model)
            if reason:
                print(f"{model}: not registered: {reason}")
                continue
            paths, register = known[model]
            missing = [str(p) for p in paths if not p.exists()]
            if missing:
                raise StageFailed(f"{model}: no stage output at {', '.join(missing)}; run "
                                  "`dvc pull` (or the pipeline) first")
            # One child run per model: MLflow logs each model's config as its run's params.
            with mlflow.start_run(run_name=f"register-{model}", nested=True,
                                  tags={"stage": "register", "model": model}):
                versions[model] = register(params)
    return versions


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="Parameters file."),
    model: list[str] = typer.Option(None, help="Model (repeatable); default: promote.models."),
    promote: bool = typer.Option(True, help="Replay the promotion decisions afterwards."),
) -> None:
    state = register_flow(params_path=str(params), models=model or None, return_state=True)
    if state.is_failed():
        typer.echo(state.message or "register failed", err=True)
        sys.exit(1)
    registered = list(state.result())
    if promote and registered:
        state = promote_flow(params_path=str(params), models=registered, return_state=True)
        if state.is_failed():
            typer.echo(state.message or "promote failed", err=True)
            sys.exit(1)


if __name__ == "__main__":
    app()

"""`python -m flows.summary`: every dataset side by side, logged to MLflow.

Not a DVC stage: it spans datasets, while each `dvc exp run -S data.name=<dataset>` runs
the pipeline for one. Run it after any dataset's `evaluate`; it reads
`outputs/*/eval/results.csv` and writes `outputs/summary.md` and `outputs/summary.csv`.
"""

from __future__ import annotations

import re

import mlflow

from components import tracking
from components.config import load_params
from components.evaluation.summary import write_summary
from components.settings import repo_root
from flows._stage import StageFailed, run_cli, stage_flow


def _key(*parts: str) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", str(part)) for part in parts)


@stage_flow("summary")
def summary(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    outputs = repo_root() / "outputs"
    data_root = repo_root() / params.data.root
    with tracking.stage_run("summary", params.tracking.experiment, {}, data_root):
        long, markdown = write_summary(outputs)
        if long.empty:
            raise StageFailed(f"no outputs/<dataset>/eval/results.csv under {outputs}; "
                              "run a pipeline first")
        mlflow.log_metrics({_key(r.dataset, r.query_set, r.system, r.metric): r.value
                            for r in long.itertuples(index=False)})
        mlflow.log_param("datasets", ",".join(sorted(set(long["dataset"]))))
        mlflow.log_artifact(str(outputs / "summary.md"), artifact_path="summary")
        mlflow.log_artifact(str(outputs / "summary.csv"), artifact_path="summary")
        print(markdown)
    return markdown


if __name__ == "__main__":
    run_cli(summary)

"""Stage `evaluate`: trec_eval metrics for every run file the pipeline produced, with paired
tests (Holm-corrected per split and query set) and, on `evaluate.primary`, the share of the
teacher's gain each student keeps and its per-query win/tie/loss. On a label-set dataset
(catalog) the training-frequency prior joins as a reference."""

from __future__ import annotations

import json
import re

import mlflow

from components import tracking
from components.atomic import atomic_path, write_text_atomic
from components.config import load_params
from components.data import catalog
from components.data.judgements import read_judgements
from components.data.splits import HELDOUT, QuerySplits
from components.evaluation.plots import metric_bars
from components.evaluation.prior import PRIOR, prior_run
from components.evaluation.report import evaluate_runs
from components.evaluation.table import (
    metrics_json,
    per_query_frame,
    plot_frame,
    results_frame,
    results_markdown,
)
from components.layout import Layout
from flows._stage import StageFailed, run_cli, stage_flow


def _metric_key(*parts: str) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_\-]+", "_", part) for part in parts)


def _prior_runs(params, splits: QuerySplits) -> dict:
    """The training-frequency prior of a label-set dataset (catalog), fitted on the training
    queries the models train on, for the test and held-out dev queries; else none."""
    if not catalog.spec(params.data.name).label_prior or splits.trains_elsewhere:
        return {}
    train = read_judgements(params.data.dataset_dir(), splits.train_split, splits.train)
    return {(PRIOR, splits.test_split): prior_run(train, splits.test),
            (PRIOR, HELDOUT): prior_run(train, splits.heldout)}


@stage_flow("evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    layout = Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"data": params.data.model_dump(), "evaluate": params.evaluate.model_dump()}
    with tracking.stage_run("evaluate", params.tracking.experiment, section, dataset_dir):
        # The only stage that reads the test judgements; the held-out dev queries' come from
        # the training split (components/data/splits.py).
        splits = QuerySplits.load(layout.splits_file)
        qrels = {splits.test_split: read_judgements(dataset_dir, splits.test_split)}
        if splits.dev_evaluated:
            qrels[HELDOUT] = read_judgements(dataset_dir, splits.train_split,
                                             splits.dev_evaluated)
        cfg = params.evaluate
        # evaluate.metrics plus the dataset's own measures (e.g. R@1, R@3 for ESConv strategies)
        metric_keys = catalog.eval_metrics(params.data.name, cfg.metrics)
        rows = evaluate_runs(layout.runs_dir, qrels, metric_keys, cfg.test, cfg.primary,
                             cfg.alpha, extra_runs=_prior_runs(params, splits))
        if not rows:
            raise StageFailed(f"no run files under {layout.runs_dir} to evaluate")
        out = layout.eval_dir
        frame = results_frame(rows, metric_keys, cfg.primary)
        summary = metrics_json(rows)
        markdown = results_markdown(rows, metric_keys, params.data.name, cfg.alpha, cfg.test,
                                    cfg.primary)
        write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(out / "results.md", markdown)
        with atomic_path(out / "results.csv") as tmp:
            frame.to_csv(tmp, index=False)
        with atomic_path(out / "plot.csv") as tmp:
            plot_frame(frame, params.data.test_split, cfg.primary).to_csv(tmp, index=False)
        with atomic_path(out / "per_query.csv") as tmp:
            per_query_frame(rows).to_csv(tmp, index=False)
        with atomic_path(out / "plots") as tmp:
            tmp.mkdir(parents=True)
            metric_bars(rows, metric_keys, tmp)
        mlflow.log_metrics({
            _metric_key(row.split, row.query_set, row.system, metric): value
            for row in rows for metric, value in row.metrics.items()
        })
        # Only defined ratios: an undefined gain kept is a note in the table, not a number.
        mlflow.log_metrics({
            _metric_key(row.split, row.query_set, row.system, "gain_kept"): row.gain.value
            for row in rows if row.gain is not None and row.gain.defined
        })
        mlflow.log_artifacts(str(out), artifact_path="eval")
        print(markdown)
    return summary


if __name__ == "__main__":
    run_cli(evaluate)

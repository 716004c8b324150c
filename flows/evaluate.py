"""Stage `evaluate`: trec_eval metrics for every run file the pipeline produced."""

from __future__ import annotations

import json
import re

import mlflow

from components import tracking
from components.atomic import atomic_path, write_text_atomic
from components.config import load_params
from components.data import catalog
from components.data.beir import load_beir
from components.evaluation.plots import metric_bars
from components.evaluation.report import (
    evaluate_runs,
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


@stage_flow("evaluate")
def evaluate(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    layout = Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"data": params.data.model_dump(), "evaluate": params.evaluate.model_dump()}
    with tracking.stage_run("evaluate", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir)
        qrels = {split: dataset.qrels_dict(split) for split in dataset.splits}
        cfg = params.evaluate
        # evaluate.metrics plus the dataset's own measures (e.g. R@1, R@3 for ESConv strategies)
        metric_keys = catalog.eval_metrics(params.data.name, cfg.metrics)
        rows = evaluate_runs(layout.runs_dir, qrels, metric_keys, cfg.test)
        if not rows:
            raise StageFailed(f"no run files under {layout.runs_dir} to evaluate")
        out = layout.eval_dir
        frame = results_frame(rows, metric_keys)
        summary = metrics_json(rows)
        markdown = results_markdown(rows, metric_keys, params.data.name, cfg.alpha, cfg.test)
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
        mlflow.log_artifacts(str(out), artifact_path="eval")
        print(markdown)
    return summary


if __name__ == "__main__":
    run_cli(evaluate)

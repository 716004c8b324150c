"""Stage `validate`: Great Expectations suites over the dataset; any violation stops the
pipeline with a report naming rule, file, line and sample values. A valid dataset gets its
query splits (`outputs/<dataset>/splits.json`, components/data/splits.py): the test topics
and their evaluated sample, the held-out dev queries and the training queries. It is the
only stage besides `evaluate` that opens the test judgements, and it keeps their ids only."""

from __future__ import annotations

import mlflow

from components import tracking
from components.atomic import write_text_atomic
from components.config import load_params, require_dataset
from components.data.judgements import read_judgements
from components.data.splits import QuerySplits
from components.layout import Layout
from components.validation.report import validate_dataset
from flows._stage import StageFailed, run_cli, stage_flow


@stage_flow("validate")
def validate(params_path: str = "params.yaml") -> str:
    params = load_params(params_path)
    dataset_dir = require_dataset(params, params_path)
    out = Layout(params.data.name).validation_dir
    section = {"data": params.data.model_dump(), "validation": params.validate.model_dump()}
    with tracking.stage_run("validate", params.tracking.experiment, section, dataset_dir):
        report = validate_dataset(dataset_dir, params.validate, params.data.train_split)
        write_text_atomic(out / "report.json", report.to_json())
        write_text_atomic(out / "report.md", report.to_markdown())
        mlflow.log_metrics({"expectations": report.expectations_run,
                            "failed_rules": len(report.failures)})
        mlflow.log_artifacts(str(out), artifact_path="validation")
        print(report.summary())
        if not report.success:
            raise StageFailed(f"{report.summary()}\nreport: {out / 'report.md'}")
        splits = carve_splits(params)
        splits.save(Layout(params.data.name).splits_file)
        mlflow.log_metrics({"test_queries": len(splits.test), "dev_queries": len(splits.heldout),
                            "train_queries": len(splits.train)})
        print(f"query splits: {splits.summary()}")
    return report.summary()


def carve_splits(params) -> QuerySplits:
    data = params.data
    test_ids = read_judgements(data.dataset_dir(), data.test_split)
    train_ids = read_judgements(data.train_dataset_dir(), data.train_split)
    return QuerySplits.carve(data.name, data.train_name, data.test_split, data.train_split,
                             test_ids, train_ids, data.eval_queries, data.dev_queries,
                             data.dev_max_share, params.seed)


if __name__ == "__main__":
    run_cli(validate)

"""Score every run file of a dataset and build the results table.

Runs live at `<runs_dir>/<system>/<split>.trec`. Each row names the query set it was
evaluated on; systems are compared only on identical query sets, so when a run covers
a subset of the judged queries the table also gets the baseline (BM25) on exactly that
subset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components.evaluation.metrics import METRIC_LABELS, mean_metrics, per_query_metrics
from components.runs import read_trec_run

# Run folder name -> the system's name in reports.
SYSTEM_NAMES = {
    "bm25": "BM25",
    "dense": "Dense (MiniLM-L6)",
    "teacher": "BM25 → teacher",
    "rabtriever_rerank": "Rabtriever (rerank@K)",
    "rabtriever_full": "Rabtriever (full corpus)",
    "bm25_subset": "BM25 (same corpus subset)",
    "gr": "GR (no distillation)",
    "dgr": "DGR",
}
BASELINE = "bm25"
# Shown again on every query subset another system was evaluated on, when their runs cover it.
REFERENCES = ("bm25", "teacher")


@dataclass
class Row:
    split: str
    system: str
    query_set: str
    n_queries: int
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return SYSTEM_NAMES.get(self.system, self.system)


def query_set_label(query_ids: list[str], judged: list[str]) -> str:
    """`all` for the full judged set, else a stable name for the subset."""
    if sorted(query_ids) == sorted(judged):
        return "all"
    digest = hashlib.sha1(" ".join(sorted(query_ids)).encode()).hexdigest()[:8]
    return f"subset-{len(query_ids)}-{digest}"


def discover_runs(runs_dir: Path) -> list[tuple[str, str, Path]]:
    """(system, split, path) for each run file, baseline first, then by name."""
    found = [(p.parent.name, p.stem, p) for p in sorted(Path(runs_dir).glob("*/*.trec"))]
    return sorted(found, key=lambda item: (item[0] != BASELINE, item[0], item[1]))


def evaluate_runs(runs_dir: Path, qrels: dict[str, dict[str, dict[str, int]]],
                  metrics: list[str]) -> list[Row]:
    rows: list[Row] = []
    loaded = {(system, split): read_trec_run(path)[0]
              for system, split, path in discover_runs(runs_dir) if split in qrels}
    for (system, split), run in loaded.items():
        judged = sorted(qrels[split])
        qids = sorted(set(run) & set(judged))
        if not qids:
            continue
        per_query = per_query_metrics(run, qrels[split], metrics, qids)
        rows.append(Row(split, system, query_set_label(qids, judged), len(qids),
                        mean_metrics(per_query), per_query))
    # The reference systems on every query subset another system was evaluated on.
    for row in list(rows):
        qids = sorted(row.per_query[metrics[0]])
        for reference in REFERENCES:
            run = loaded.get((reference, row.split))
            exists = any(r.system == reference and r.split == row.split and
                         r.query_set == row.query_set for r in rows)
            if run is None or exists or not set(qids) <= set(run):
                continue
            per_query = per_query_metrics(run, qrels[row.split], metrics, qids)
            rows.append(Row(row.split, reference, row.query_set, len(qids),
                            mean_metrics(per_query), per_query))
    order = {name: i for i, name in enumerate(SYSTEM_NAMES)}
    rows.sort(key=lambda r: (r.split, r.query_set != "all", r.query_set,
                             order.get(r.system, len(order)), r.system))
    return rows


def metrics_json(rows: list[Row]) -> dict:
    """split -> query set -> system -> metrics (nested so `dvc metrics show` reads it)."""
    result: dict = {}
    for row in rows:
        entry = {**{k: round(v, 4) for k, v in row.metrics.items()}, "queries": row.n_queries}
        result.setdefault(row.split, {}).setdefault(row.query_set, {})[row.name] = entry
    return result


def results_frame(rows: list[Row], metrics: list[str]) -> pd.DataFrame:
    records = []
    for row in rows:
        record = {"split": row.split, "query set": row.query_set, "queries": row.n_queries,
                  "system": row.name}
        record.update({METRIC_LABELS.get(m, m): round(row.metrics[m], 4) for m in metrics})
        records.append(record)
    return pd.DataFrame.from_records(records)


def results_markdown(frame: pd.DataFrame, dataset: str) -> str:
    lines = [f"# Results: {dataset}", "",
             "Rows are compared only within the same split and query set.", ""]
    for (split, query_set), group in frame.groupby(["split", "query set"], sort=False):
        lines += [f"## {split} — query set `{query_set}` ({group['queries'].iloc[0]} queries)",
                  "", group.drop(columns=["split", "query set"]).to_markdown(index=False), ""]
    return "\n".join(lines)


def per_query_frame(rows: list[Row]) -> pd.DataFrame:
    records = []
    for row in rows:
        for metric, values in row.per_query.items():
            for qid, value in values.items():
                records.append((row.split, row.query_set, row.name, metric, qid, value))
    return pd.DataFrame.from_records(
        records, columns=["split", "query_set", "system", "metric", "query_id", "value"])

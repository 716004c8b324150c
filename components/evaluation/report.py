"""Score every run file of a dataset and build the results table.

Runs live at `<runs_dir>/<system>/<split>.trec`, each beside its `cost.json` (per-query
latency and index size, see components.evaluation.costs). Each row names the query set it
was evaluated on; systems are compared only on identical query sets, so when a run covers
a subset of the judged queries the table also gets the references (BM25 and the teacher)
on exactly that subset. Every metric of every row carries a paired significance test
against each reference on the same queries; the markdown table shows the significant ones
as marks (see `MARK_LEGEND`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from components.evaluation.costs import read_cost
from components.evaluation.metrics import METRIC_LABELS, mean_metrics, per_query_metrics
from components.evaluation.significance import compare
from components.runs import read_trec_run

# Run folder name -> the system's name in reports.
SYSTEM_NAMES = {
    "bm25": "BM25",
    "dense": "Dense (MiniLM-L6)",
    "teacher": "BM25 → teacher",
    "rabtriever_rerank": "Rabtriever (rerank@K)",
    "rabtriever_full": "Rabtriever (full corpus)",
    "bm25_subset": "BM25 (same corpus subset)",
    "biencoder_rerank": "Bi-encoder, same LLM (rerank@K)",
    "biencoder_full": "Bi-encoder, same LLM (full corpus)",
    "gr": "GR (no distillation)",
    "dgr": "DGR",
}
BASELINE = "bm25"
# Shown again on every query subset another system was evaluated on, when their runs cover it,
# and the systems every row is tested against.
REFERENCES = ("bm25", "teacher")
REFERENCE_MARKS = {"bm25": "B", "teacher": "T"}
MARK_LEGEND = ("▲B / ▼B: significantly better / worse than BM25 on the same queries; "
               "▲T / ▼T: the same against `BM25 → teacher` (paired {test}, p < {alpha}).")


@dataclass
class Row:
    split: str
    system: str
    query_set: str
    n_queries: int
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    cost: dict | None = None
    # metric -> reference system -> (p-value, mean difference row - reference)
    tests: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)

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
                  metrics: list[str], test: str = "t-test") -> list[Row]:
    rows: list[Row] = []
    costs = {system: read_cost(path.parent) for system, _, path in discover_runs(runs_dir)}
    loaded = {(system, split): read_trec_run(path)[0]
              for system, split, path in discover_runs(runs_dir) if split in qrels}
    for (system, split), run in loaded.items():
        judged = sorted(qrels[split])
        qids = sorted(set(run) & set(judged))
        if not qids:
            continue
        per_query = per_query_metrics(run, qrels[split], metrics, qids)
        rows.append(Row(split, system, query_set_label(qids, judged), len(qids),
                        mean_metrics(per_query), per_query, costs.get(system)))
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
                            mean_metrics(per_query), per_query, costs.get(reference)))
    add_significance(rows, test)
    order = {name: i for i, name in enumerate(SYSTEM_NAMES)}
    rows.sort(key=lambda r: (r.split, r.query_set != "all", r.query_set,
                             order.get(r.system, len(order)), r.system))
    return rows


def add_significance(rows: list[Row], test: str = "t-test") -> None:
    """Test every row against each reference row on the same split and query set."""
    references = {(r.split, r.query_set, r.system): r for r in rows if r.system in REFERENCES}
    for row in rows:
        for reference in REFERENCES:
            other = references.get((row.split, row.query_set, reference))
            if other is None or other is row:
                continue
            for metric, values in row.per_query.items():
                row.tests.setdefault(metric, {})[reference] = compare(
                    values, other.per_query[metric], method=test)


def significance_marks(row: Row, metric: str, alpha: float) -> str:
    """`▲B▼T`-style marks for the references this row differs from significantly."""
    marks = ""
    for reference, (p_value, diff) in row.tests.get(metric, {}).items():
        if p_value < alpha and diff != 0:
            marks += ("▲" if diff > 0 else "▼") + REFERENCE_MARKS[reference]
    return marks


def metrics_json(rows: list[Row]) -> dict:
    """split -> query set -> system -> metrics (nested so `dvc metrics show` reads it)."""
    result: dict = {}
    for row in rows:
        entry = {**{k: round(v, 4) for k, v in row.metrics.items()}, "queries": row.n_queries}
        result.setdefault(row.split, {}).setdefault(row.query_set, {})[row.name] = entry
    return result


def results_frame(rows: list[Row], metrics: list[str]) -> pd.DataFrame:
    """One record per row: metrics, costs, and the p-values against each reference."""
    records = []
    for row in rows:
        latency = (row.cost or {}).get("latency", {})
        record = {"split": row.split, "query set": row.query_set, "queries": row.n_queries,
                  "system": row.name}
        record.update({METRIC_LABELS.get(m, m): round(row.metrics[m], 4) for m in metrics})
        record["latency median (ms)"] = _rounded(latency.get("median_ms"), 1)
        record["latency p95 (ms)"] = _rounded(latency.get("p95_ms"), 1)
        index_bytes = (row.cost or {}).get("index_bytes")
        record["index (MB)"] = _rounded(index_bytes / 1e6 if index_bytes else None, 2)
        for metric in metrics:
            for reference in REFERENCES:
                p_value = row.tests.get(metric, {}).get(reference, (None, None))[0]
                label = f"p vs {SYSTEM_NAMES[reference]} ({METRIC_LABELS.get(metric, metric)})"
                record[label] = _rounded(p_value, 4)
        records.append(record)
    return pd.DataFrame.from_records(records)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def results_markdown(rows: list[Row], metrics: list[str], dataset: str, alpha: float,
                     test: str) -> str:
    lines = [f"# Results: {dataset}", "",
             "Rows are compared only within the same split and query set. Latency: one query "
             "at a time on the machine that ran the stage (median / p95); index: bytes on "
             "disk the system searches.", "", MARK_LEGEND.format(test=test, alpha=alpha), ""]
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.split, row.query_set), []).append(row)
    for (split, query_set), group in groups.items():
        table = pd.DataFrame.from_records([_markdown_record(r, metrics, alpha) for r in group])
        lines += [f"## {split} — query set `{query_set}` ({group[0].n_queries} queries)", "",
                  table.to_markdown(index=False), ""]
    return "\n".join(lines)


def _markdown_record(row: Row, metrics: list[str], alpha: float) -> dict:
    record = {"system": row.name}
    for metric in metrics:
        marks = significance_marks(row, metric, alpha)
        record[METRIC_LABELS.get(metric, metric)] = f"{row.metrics[metric]:.4f} {marks}".strip()
    latency = (row.cost or {}).get("latency")
    record["latency ms (median / p95)"] = (
        f"{latency['median_ms']:.1f} / {latency['p95_ms']:.1f}" if latency else "—")
    index_bytes = (row.cost or {}).get("index_bytes")
    record["index"] = f"{index_bytes / 1e6:.1f} MB" if index_bytes else "—"
    return record


def plot_frame(frame: pd.DataFrame, split: str, primary: str) -> pd.DataFrame:
    """The `dvc plots` data: one bar per row of `split`, labelled with its query set (a
    system appears once per query set it was evaluated on; bars must never stack)."""
    label = METRIC_LABELS.get(primary, primary)
    rows = frame[frame["split"] == split]
    names = rows["system"] + " · " + rows["query set"] + " (" + rows["queries"].astype(str) + " q)"
    return pd.DataFrame({"row": names, label: rows[label]})


def per_query_frame(rows: list[Row]) -> pd.DataFrame:
    records = []
    for row in rows:
        for metric, values in row.per_query.items():
            for qid, value in values.items():
                records.append((row.split, row.query_set, row.name, metric, qid, value))
    return pd.DataFrame.from_records(
        records, columns=["split", "query_set", "system", "metric", "query_id", "value"])

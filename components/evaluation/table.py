"""The results table `evaluate` writes: results.md for people, results.csv and metrics.json
for tools, plus the plot and per-query frames. Everything here only formats what
components.evaluation.report computed; one table per split and query set (one Holm family
per metric).
"""

from __future__ import annotations

import math

import pandas as pd

from components.evaluation.headline import GAIN_RESAMPLES, GainKept
from components.evaluation.metrics import METRIC_LABELS
from components.evaluation.report import REFERENCES, SYSTEM_NAMES, Row, families

REFERENCE_MARKS = {"bm25": "B", "prior": "P", "teacher": "T"}
# Short names in column headers: the full system names are long.
REFERENCE_SHORT = {"bm25": "BM25", "prior": "prior", "teacher": "teacher"}
MARK_LEGEND = (
    "▲B / ▼B: significantly better / worse than BM25 on the same queries; ▲T / ▼T: the same "
    "against `BM25 → teacher`{prior} (paired {test}, Holm-adjusted p < {alpha}). Holm family: one "
    "column of one table below (one metric on one split and query set); it holds every "
    "distinct pair of systems tested there (each row against each reference, BM25 vs teacher "
    "once). results.csv keeps the raw and the adjusted p-values.")
PRIOR_MARK = ("; ▲P / ▼P: against the prior, every query ranked by how often each document was "
              "relevant to the training queries")


def present_references(rows: list[Row]) -> list[str]:
    """The references that have rows here, in `REFERENCES` order: the prior only where the
    dataset has one, so other tables keep their columns."""
    systems = {row.system for row in rows}
    return [reference for reference in REFERENCES if reference in systems]
GAIN_LEGEND = (
    "Gain kept ({primary}): (student − BM25) / (teacher − BM25) on the same queries: 100% "
    "matches the teacher, 0% is no better than BM25. In brackets its paired bootstrap 95% "
    "interval (queries resampled jointly, {resamples:,} resamples, seeded, percentile; ∞ where "
    "too many resamples show no teacher gain). `undefined` where the teacher is not "
    "significantly above BM25 on that query set (Holm-adjusted): the ratio would divide by "
    "noise. W/T/L vs X: queries where the row's {primary} is above / exactly equal to / below "
    "X's.")


def significance_marks(row: Row, metric: str, alpha: float) -> str:
    """`▲B▼T`-style marks for the references this row differs from, after Holm correction."""
    marks = ""
    for reference, result in row.tests.get(metric, {}).items():
        if result.p_holm < alpha and result.diff != 0:
            marks += ("▲" if result.diff > 0 else "▼") + REFERENCE_MARKS[reference]
    return marks


def _label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def _gain_label(primary: str) -> str:
    return f"gain kept ({_label(primary)})"


def _wtl_label(reference: str, primary: str | None = None) -> str:
    suffix = f" ({_label(primary)})" if primary else ""
    return f"W/T/L vs {REFERENCE_SHORT[reference]}{suffix}"


def _percent(value: float) -> str:
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return f"{value:.0%}"


def format_gain(gain: GainKept | None) -> str:
    """`62% [41%, 85%]`, the undefined note, or `—` for rows that have none."""
    if gain is None:
        return "—"
    if not gain.defined:
        return gain.note or "undefined"
    return f"{_percent(gain.value)} [{_percent(gain.low)}, {_percent(gain.high)}]"


def format_wtl(row: Row, reference: str) -> str:
    counts = row.wtl.get(reference)
    return "/".join(str(n) for n in counts) if counts else "—"


def _finite(value: float | None, digits: int = 4) -> float | None:
    """Rounded, or None for a missing or unbounded value (JSON has no infinity)."""
    return None if value is None or math.isinf(value) else round(float(value), digits)


def _rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def metrics_json(rows: list[Row]) -> dict:
    """split -> query set -> system -> metrics (nested so `dvc metrics show` reads it), with
    queries, win/tie/loss against each reference and, for students, gain kept (a null bound
    is unbounded; a `gain_kept_note` says why there is no ratio)."""
    result: dict = {}
    for row in rows:
        entry: dict = {**{k: round(v, 4) for k, v in row.metrics.items()},
                       "queries": row.n_queries}
        for reference, (wins, ties, losses) in row.wtl.items():
            entry[f"wtl_vs_{reference}"] = {"wins": wins, "ties": ties, "losses": losses}
        if row.gain is not None:
            entry["gain_kept"] = _finite(row.gain.value)
            if row.gain.defined:
                entry["gain_kept_low"] = _finite(row.gain.low)
                entry["gain_kept_high"] = _finite(row.gain.high)
            else:
                entry["gain_kept_note"] = row.gain.note
        result.setdefault(row.split, {}).setdefault(row.query_set, {})[row.name] = entry
    return result


def results_frame(rows: list[Row], metrics: list[str], primary: str | None = None
                  ) -> pd.DataFrame:
    """One record per row: metrics, the headline on `primary`, costs, and the raw and
    Holm-adjusted p-values against each reference."""
    primary = primary or metrics[0]
    references = present_references(rows)
    records = []
    for row in rows:
        latency = (row.cost or {}).get("latency", {})
        record = {"split": row.split, "query set": row.query_set, "queries": row.n_queries,
                  "system": row.name}
        record.update({_label(m): round(row.metrics[m], 4) for m in metrics})
        gain = row.gain
        record[_gain_label(primary)] = _rounded(gain.value if gain else None, 4)
        record["gain kept low"] = _rounded(gain.low if gain else None, 4)
        record["gain kept high"] = _rounded(gain.high if gain else None, 4)
        record["gain kept note"] = gain.note if gain else None
        for reference in references:
            record[_wtl_label(reference, primary)] = (
                format_wtl(row, reference) if reference in row.wtl else None)
        record["latency median (ms)"] = _rounded(latency.get("median_ms"), 1)
        record["latency p95 (ms)"] = _rounded(latency.get("p95_ms"), 1)
        index_bytes = (row.cost or {}).get("index_bytes")
        record["index (MB)"] = _rounded(index_bytes / 1e6 if index_bytes else None, 2)
        for metric in metrics:
            for reference in references:
                result = row.tests.get(metric, {}).get(reference)
                where = f"{SYSTEM_NAMES[reference]} ({_label(metric)})"
                record[f"p vs {where}"] = _rounded(result.p if result else None, 4)
                record[f"p Holm vs {where}"] = _rounded(result.p_holm if result else None, 4)
        records.append(record)
    return pd.DataFrame.from_records(records)


def results_markdown(rows: list[Row], metrics: list[str], dataset: str, alpha: float,
                     test: str, primary: str | None = None) -> str:
    primary = primary or metrics[0]
    references = present_references(rows)
    legend = MARK_LEGEND.format(test=test, alpha=alpha,
                                prior=PRIOR_MARK if "prior" in references else "")
    lines = [f"# Results: {dataset}", "",
             "Rows are compared only within the same split and query set: `test` is the test "
             "split, `heldout` the held-out dev queries (training queries no model trained on; "
             "defaults and promotion are chosen there). `BM25 → X`: X reranks BM25's top K "
             "(`rank_lists.depth`); other rows retrieve over the whole corpus. A query a system "
             "was asked and answered with nothing scores 0. Latency: one query at a time on "
             "the machine that ran the stage (median / p95); index: bytes on disk the system "
             "searches.", "", legend, "",
             GAIN_LEGEND.format(primary=_label(primary), resamples=GAIN_RESAMPLES), ""]
    for (split, query_set), group in families(rows).items():
        table = pd.DataFrame.from_records(
            [_markdown_record(r, metrics, primary, alpha, references) for r in group])
        lines += [f"## {split} — query set `{query_set}` ({group[0].n_queries} queries)", "",
                  table.to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def _markdown_record(row: Row, metrics: list[str], primary: str, alpha: float,
                     references: list[str]) -> dict:
    record = {"system": row.name}
    for metric in metrics:
        marks = significance_marks(row, metric, alpha)
        record[_label(metric)] = f"{row.metrics[metric]:.4f} {marks}".strip()
    record[f"{_gain_label(primary)} [95% CI]"] = format_gain(row.gain)
    for reference in references:
        record[_wtl_label(reference)] = format_wtl(row, reference)
    latency = (row.cost or {}).get("latency")
    record["latency ms (median / p95)"] = (
        f"{latency['median_ms']:.1f} / {latency['p95_ms']:.1f}" if latency else "—")
    index_bytes = (row.cost or {}).get("index_bytes")
    record["index"] = f"{index_bytes / 1e6:.1f} MB" if index_bytes else "—"
    return record


def plot_frame(frame: pd.DataFrame, split: str, primary: str) -> pd.DataFrame:
    """The `dvc plots` data: one bar per row of `split`, labelled with its query set (a
    system appears once per query set it was evaluated on; bars must never stack)."""
    label = _label(primary)
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


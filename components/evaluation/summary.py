"""Every dataset side by side: systems x datasets, nDCG@10 and each task's headline metric.

Built only from what `evaluate` wrote (`outputs/<dataset>/eval/results.csv`), restricted to
each dataset's test split (`components/data/catalog.py`). A column is one dataset on one
query set: the full test split (`all`) or the seeded subset the CPU model stages evaluate,
where BM25 and the teacher are scored on exactly the same queries. Compare rows only within
a column. A system with no row for a dataset is listed as pending, with the reason a stage
left when it skipped a system on purpose (`outputs/<dataset>/*/summary.json`, `skipped`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from components.data import catalog
from components.evaluation.metrics import METRIC_LABELS
from components.evaluation.prior import PRIOR
from components.evaluation.report import SYSTEM_NAMES

PRIMARY = "ndcg_cut_10"
LONG_COLUMNS = ["dataset", "split", "query_set", "queries", "system", "metric", "value",
                "headline"]


def label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def collect(outputs_dir: Path) -> pd.DataFrame:
    """One row per (dataset, query set, system, metric) for nDCG@10 and the headline metric,
    read from every `<outputs_dir>/<dataset>/eval/results.csv`, test split only."""
    records = []
    for path in sorted(Path(outputs_dir).glob("*/eval/results.csv")):
        dataset = path.parent.parent.name
        spec = catalog.spec(dataset)
        frame = pd.read_csv(path)
        for row in frame[frame["split"] == spec.test_split].to_dict("records"):
            for metric in dict.fromkeys([PRIMARY, spec.headline]):
                if label(metric) not in row or pd.isna(row[label(metric)]):
                    continue
                records.append((dataset, row["split"], row["query set"], int(row["queries"]),
                                row["system"], metric, float(row[label(metric)]),
                                metric == spec.headline))
    return pd.DataFrame.from_records(records, columns=LONG_COLUMNS)


def skip_notes(outputs_dir: Path) -> dict[str, list[str]]:
    """dataset -> reasons stages gave for not producing a system: a `skipped` entry in their
    summary.json, or the DISABLED.md a switched-off stage leaves in its run folders."""
    notes: dict[str, list[str]] = {}
    for path in sorted(Path(outputs_dir).glob("*/*/summary.json")):
        reason = json.loads(path.read_text()).get("skipped")
        if reason:
            notes.setdefault(path.parent.parent.name, []).append(reason)
    for path in sorted(Path(outputs_dir).glob("*/runs/*/DISABLED.md")):
        reason = path.read_text().strip()
        dataset_notes = notes.setdefault(path.parent.parent.parent.name, [])
        if reason and reason not in dataset_notes:  # one note per stage, not per run folder
            dataset_notes.append(reason)
    return notes


def _system_order(systems) -> list[str]:
    known = [name for name in SYSTEM_NAMES.values() if name in set(systems)]
    return known + sorted(set(systems) - set(known))


def _column_name(dataset: str, query_set: str, queries: int) -> str:
    where = "all" if query_set == "all" else "subset"
    return f"{dataset} ({where}, {queries} q)"


def side_by_side(long: pd.DataFrame, headline: bool) -> pd.DataFrame:
    """Systems x (dataset, query set): nDCG@10 (headline=False) or each headline metric."""
    frame = long[long["headline"]] if headline else long[long["metric"] == PRIMARY]
    if frame.empty:
        return pd.DataFrame()
    frame = frame.assign(column=[
        _column_name(d, q, n) + (f" {label(m)}" if headline else "")
        for d, q, n, m in zip(frame["dataset"], frame["query_set"], frame["queries"],
                              frame["metric"], strict=True)])
    # "all" before subsets within a dataset, datasets in catalog order then by name
    order = list(catalog.CATALOG)
    frame = frame.assign(_d=[order.index(d) if d in order else len(order) for d in
                             frame["dataset"]], _all=frame["query_set"] != "all")
    columns = list(dict.fromkeys(frame.sort_values(["_d", "dataset", "_all", "query_set"])
                                 ["column"]))
    table = frame.pivot_table(index="system", columns="column", values="value",
                              aggfunc="first")
    return table.reindex(index=_system_order(table.index), columns=columns)


def pending(long: pd.DataFrame, datasets: list[str]) -> dict[str, list[str]]:
    """dataset -> pipeline systems with no result on its test split."""
    def expected(dataset: str) -> list[str]:
        return [name for system, name in SYSTEM_NAMES.items()
                if system != PRIOR or catalog.spec(dataset).label_prior]

    return {d: [s for s in expected(d) if s not in set(long.loc[long["dataset"] == d, "system"])]
            for d in datasets}


def _markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no results yet)"
    shown = table.map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    # disable_numparse: keep the 4-decimal strings (tabulate would re-parse and trim them)
    return shown.reset_index().to_markdown(index=False, disable_numparse=True)


def summary_markdown(long: pd.DataFrame, datasets: list[str],
                     notes: dict[str, list[str]] | None = None) -> str:
    lines = [
        "# Summary: every dataset side by side", "",
        "Generated by `python -m flows.summary` from `outputs/<dataset>/eval/results.csv` "
        "(each dataset's test split). A column is one dataset on one query set: `all` test "
        "queries, or the seeded subset the CPU model stages evaluate (BM25 and the teacher "
        "are scored on the same subset). Compare rows only within a column.", "",
        "## nDCG@10", "", _markdown_table(side_by_side(long, headline=False)), "",
        "## Headline metric of each task", "", _markdown_table(side_by_side(long, True)), "",
        "## Datasets", "",
        "| dataset | task | trained on | evaluated on | headline |", "|---|---|---|---|---|",
    ]
    for dataset in datasets:
        spec = catalog.spec(dataset)
        trained = f"{spec.train_name or dataset} / {spec.train_split}"
        lines.append(f"| {dataset} | {spec.task} | {trained} | {spec.test_split} | "
                     f"{label(spec.headline)} |")
    lines += ["", "## Pending", ""]
    for dataset, systems in pending(long, datasets).items():
        if systems:
            lines.append(f"- {dataset}: {', '.join(systems)}")
        for note in (notes or {}).get(dataset, []):
            lines.append(f"  - note: {note}")
    return "\n".join(lines) + "\n"


def write_summary(outputs_dir: Path) -> tuple[pd.DataFrame, str]:
    """Write `<outputs_dir>/summary.csv` (long form) and `summary.md`; returns both."""
    outputs_dir = Path(outputs_dir)
    long = collect(outputs_dir)
    datasets = sorted({p.parent.parent.name
                       for p in outputs_dir.glob("*/eval/results.csv")},
                      key=lambda d: (list(catalog.CATALOG).index(d)
                                     if d in catalog.CATALOG else len(catalog.CATALOG), d))
    markdown = summary_markdown(long, datasets, skip_notes(outputs_dir))
    long.to_csv(outputs_dir / "summary.csv", index=False)
    (outputs_dir / "summary.md").write_text(markdown, encoding="utf-8")
    return long, markdown

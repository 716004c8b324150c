"""Score every run file of a dataset and build the results table.

Runs live at `<runs_dir>/<system>/<split>.trec`, each beside its `cost.json` (per-query
latency and index size, see components.evaluation.costs) and its `.topics` sidecar (the
queries the system was asked). A row's query set is the judged queries the system was asked:
one it answered with an empty ranking scores 0 on every metric instead of dropping out,
which would flatter a system that fails on hard queries. A run without a sidecar falls back
to the judged queries it answered. Systems are compared only on identical query sets, so
when a run covers a subset of the judged queries the table also gets the references (BM25
and the teacher) on exactly that subset. Every split is treated alike.

Every metric of every row carries a paired significance test against each reference on the
same queries. The tests of one metric on one split and query set form one family (every
system compared there, as an IR paper corrects its table's column), corrected with Holm's
step-down (components.evaluation.significance.holm); the table's marks read the adjusted
p-values, results.csv keeps both. Each student row also gets the distillation headline on the
primary metric (components.evaluation.headline): gain kept with its bootstrap interval, and
win/tie/loss against both references.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from components.evaluation.costs import read_cost
from components.evaluation.headline import GAIN_RESAMPLES, GainKept, gain_kept, win_tie_loss
from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.evaluation.prior import PRIOR
from components.evaluation.significance import compare, holm
from components.runs import Run, read_run_topics, read_trec_run

# Run folder name -> the system's name in reports.
SYSTEM_NAMES = {
    "bm25": "BM25",
    "dense": "Dense (MiniLM-L6)",
    "prior": "Prior (training frequency)",
    "teacher": "BM25 → teacher",
    "rabtriever_rerank": "BM25 → Rabtriever",
    "rabtriever_full": "Rabtriever (whole corpus)",
    "biencoder_rerank": "BM25 → bi-encoder, same LLM",
    "biencoder_full": "Bi-encoder, same LLM (whole corpus)",
    "gr": "GR (no distillation)",
    "dgr": "DGR",
}
BASELINE = "bm25"
TEACHER = "teacher"
# The systems every row is tested against, where their rows exist: BM25, the training-frequency
# prior (only on label-set datasets, components/evaluation/prior.py) and the teacher.
REFERENCES = (BASELINE, PRIOR, TEACHER)
# Scored again on every query subset a student was evaluated on: the references, and the
# strongest first-stage baseline beside BM25, so a student is read against both.
SHOWN_ON_SUBSETS = (BASELINE, "dense", PRIOR, TEACHER)
UNDEFINED_GAIN = "undefined: teacher not significantly above BM25"


class PairedTest(NamedTuple):
    p: float  # raw two-sided p-value
    diff: float  # mean(row - reference)
    p_holm: float  # Holm-adjusted within the row's split and query set


@dataclass
class Row:
    split: str
    system: str
    query_set: str
    n_queries: int
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(repr=False, default_factory=dict)
    cost: dict | None = None
    # metric -> reference system -> paired test of this row against it
    tests: dict[str, dict[str, PairedTest]] = field(default_factory=dict)
    # primary metric only: the share of the teacher's gain over BM25 (students only) ...
    gain: GainKept | None = None
    # ... and reference system -> (wins, ties, losses) per query
    wtl: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return SYSTEM_NAMES.get(self.system, self.system)

    @property
    def is_student(self) -> bool:
        return self.system not in REFERENCES


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
                  metrics: list[str], test: str = "t-test", primary: str | None = None,
                  alpha: float = 0.05, n_resamples: int = GAIN_RESAMPLES,
                  extra_runs: dict[tuple[str, str], Run] | None = None) -> list[Row]:
    """Rows for every run of a split in `qrels`, tested, corrected, and with the headline on
    `primary` (default: the first metric) at significance level `alpha`. `extra_runs`
    ((system, split) -> run) adds runs built in memory, asked every query they hold (the
    prior)."""
    primary = primary or metrics[0]
    if primary not in metrics:
        raise ValueError(f"evaluate.primary {primary!r} is not among the metrics {metrics}")
    found = [(system, split, path) for system, split, path in discover_runs(runs_dir)
             if split in qrels]
    costs = {system: read_cost(path.parent) for system, _, path in found}
    loaded, asked = {}, {}
    for system, split, path in found:
        run = read_trec_run(path)[0]
        topics = read_run_topics(path)
        loaded[(system, split)] = run
        asked[(system, split)] = set(run) if topics is None else set(topics)
    for (system, split), run in (extra_runs or {}).items():
        if split in qrels:
            loaded[(system, split)], asked[(system, split)] = run, set(run)
    rows: list[Row] = []
    for (system, split), run in loaded.items():
        judged = sorted(qrels[split])
        qids = sorted(asked[(system, split)] & set(judged))
        if not qids:
            continue
        per_query = per_query_metrics(run, qrels[split], metrics, qids)
        rows.append(Row(split, system, query_set_label(qids, judged), len(qids),
                        mean_metrics(per_query), per_query, costs.get(system)))
    # The references and baselines on every query subset another system was evaluated on.
    for row in list(rows):
        qids = sorted(row.per_query[metrics[0]])
        for reference in SHOWN_ON_SUBSETS:
            run = loaded.get((reference, row.split))
            exists = any(r.system == reference and r.split == row.split and
                         r.query_set == row.query_set for r in rows)
            if run is None or exists or not set(qids) <= asked[(reference, row.split)]:
                continue
            per_query = per_query_metrics(run, qrels[row.split], metrics, qids)
            rows.append(Row(row.split, reference, row.query_set, len(qids),
                            mean_metrics(per_query), per_query, costs.get(reference)))
    add_significance(rows, test)
    add_headline(rows, primary, alpha, n_resamples)
    order = {name: i for i, name in enumerate(SYSTEM_NAMES)}
    rows.sort(key=lambda r: (r.split, r.query_set != "all", r.query_set,
                             order.get(r.system, len(order)), r.system))
    return rows


def families(rows: list[Row]) -> dict[tuple[str, str], list[Row]]:
    """(split, query set) -> its rows: the unit of comparison, and the Holm family."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.split, row.query_set), []).append(row)
    return groups


def _references(group: list[Row]) -> dict[str, Row]:
    """The reference rows of one family, in `REFERENCES` order (the order of the marks)."""
    return {r.system: r for reference in REFERENCES for r in group if r.system == reference}


def add_significance(rows: list[Row], test: str = "t-test") -> None:
    """Test every row against each reference row on the same split and query set, then
    Holm-correct each family: one metric, every distinct pair of systems once (BM25's row
    against the teacher is the teacher's row against BM25, not a second test)."""
    for group in families(rows).values():
        references = _references(group)
        raw: dict[tuple[frozenset, str], tuple[float, float]] = {}
        for row in group:
            for reference, other in references.items():
                if other is row:
                    continue
                for metric, values in row.per_query.items():
                    pair = (frozenset((row.system, reference)), metric)
                    if pair in raw:  # the same test seen from the other side
                        p_value, diff = raw[pair]
                        row.tests.setdefault(metric, {})[reference] = PairedTest(
                            p_value, -diff, p_value)
                        continue
                    p_value, diff = compare(values, other.per_query[metric], method=test)
                    raw[pair] = (p_value, diff)
                    row.tests.setdefault(metric, {})[reference] = PairedTest(
                        p_value, diff, p_value)
        adjusted = {}
        for metric in {metric for _, metric in raw}:
            family = [pair for pair in raw if pair[1] == metric]
            adjusted.update(zip(family, holm([raw[pair][0] for pair in family]), strict=True))
        for row in group:
            for metric, by_reference in row.tests.items():
                for reference, result in by_reference.items():
                    pair = (frozenset((row.system, reference)), metric)
                    by_reference[reference] = result._replace(p_holm=float(adjusted[pair]))


def teacher_beats_first_stage(group: list[Row], primary: str, alpha: float) -> bool:
    """Is the teacher significantly above BM25 on this query set, after correction?"""
    teacher = next((r for r in group if r.system == TEACHER), None)
    result = teacher.tests.get(primary, {}).get(BASELINE) if teacher else None
    return result is not None and result.p_holm < alpha and result.diff > 0


def add_headline(rows: list[Row], primary: str, alpha: float,
                 n_resamples: int = GAIN_RESAMPLES) -> None:
    """Win/tie/loss of every row against each other reference, and gain kept of each student
    row whose query set has both references: undefined unless the teacher significantly
    beats BM25 there, as otherwise the ratio divides by noise. Call after `add_significance`."""
    for group in families(rows).values():
        references = _references(group)
        significant = teacher_beats_first_stage(group, primary, alpha)
        for row in group:
            for reference, other in references.items():
                if other is not row:
                    row.wtl[reference] = win_tie_loss(row.per_query[primary],
                                                      other.per_query[primary])
            if not row.is_student or not {BASELINE, TEACHER} <= set(references):
                continue
            if not significant:
                row.gain = GainKept(None, note=UNDEFINED_GAIN)
                continue
            row.gain = gain_kept(row.per_query[primary],
                                 references[BASELINE].per_query[primary],
                                 references[TEACHER].per_query[primary], n_resamples)

"""Choose `rank_lists.first_stage_weight` on the held-out dev queries, from a finished run.

    .venv/bin/python scripts/first_stage_weight.py [--weights 0 0.1 ... 1] [--params params.yaml]

Reads the finished run's BM25 dev run and the teacher's own scores of the same candidates
(`rank_lists/pairs.parquet`, kept whatever the weight) and mixes them at each weight as
components/fusion.py does; nothing is rerun, and only the dev judgements are read. The table
gives the dev primary metric of the teacher at each weight, the difference from BM25 with its
paired test (Holm-corrected over the weights) and win/tie/loss. The chosen weight is the one
with the best dev mean; the test figures come from the pipeline run with it (`evaluate`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

import pandas as pd  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.judgements import read_judgements  # noqa: E402
from components.data.splits import HELDOUT, QuerySplits  # noqa: E402
from components.evaluation.headline import win_tie_loss  # noqa: E402
from components.evaluation.metrics import METRIC_LABELS, per_query_metrics  # noqa: E402
from components.evaluation.significance import compare, holm  # noqa: E402
from components.fusion import interpolate  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.runs import read_trec_run  # noqa: E402


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+",
                        default=[round(0.1 * i, 1) for i in range(11)])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    layout, metric = Layout(params.data.name), params.evaluate.primary
    splits = QuerySplits.load(layout.splits_file)
    qrels = read_judgements(params.data.dataset_dir(), splits.train_split, splits.dev_evaluated)
    bm25 = read_trec_run(layout.run_dir("bm25") / f"{HELDOUT}.trec")[0]
    pairs = pd.read_parquet(layout.rank_lists_dir / "pairs.parquet",
                            columns=["split", "query_id", "doc_id", "score"])
    teacher: dict = {}
    for qid, docid, score in pairs[pairs["split"] == HELDOUT][
            ["query_id", "doc_id", "score"]].itertuples(index=False):
        teacher.setdefault(qid, []).append((docid, float(score)))
    qids = sorted(set(qrels) & set(teacher))
    reference = per_query_metrics(bm25, qrels, [metric], qids)[metric]
    rows = []
    for weight in args.weights:
        mixed = interpolate(bm25, teacher, weight)
        scores = per_query_metrics(mixed, qrels, [metric], qids)[metric]
        p, diff = compare(scores, reference, params.evaluate.test)
        rows.append((weight, sum(scores.values()) / len(qids), diff, p,
                     win_tie_loss(scores, reference)))
    adjusted = holm([row[3] for row in rows])
    best = max(rows, key=lambda row: row[1])[0]
    label = METRIC_LABELS.get(metric, metric)
    lines = [f"dev ({len(qids)} held-out queries), BM25 {label} "
             f"{sum(reference.values()) / len(qids):.4f}", "",
             f"| first_stage_weight | teacher dev {label} | Δ vs BM25 | p (Holm) | W/T/L |",
             "|---|---|---|---|---|"]
    for (weight, mean, diff, _, wtl), p_holm in zip(rows, adjusted, strict=True):
        mark = " (best)" if weight == best else ""
        lines.append(f"| {weight:g}{mark} | {mean:.4f} | {diff:+.4f} | {p_holm:.3f} | "
                     f"{'/'.join(map(str, wtl))} |")
    lines += ["", f"chosen on dev: rank_lists.first_stage_weight = {best:g}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())

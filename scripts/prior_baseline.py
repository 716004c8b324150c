"""A content-blind baseline: rank every document by how often it is relevant in training.

    .venv/bin/python scripts/prior_baseline.py [--params params.yaml] [--dataset NAME]

On tasks with a small, fixed document set (the 8 ESConv strategies, the LIBERO goals) a model
can score well by learning which documents are relevant most often, without reading the query.
This prints that prior's metrics on the test split (all queries, the seeded evaluation
sample the model stages use, and its first `dgr.eval_queries` where GR/DGR are decoded), so
a model row can be read against it. The prior is counted on the training split of the
dataset that trains the models (`components/data/catalog.py`).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import load_params  # noqa: E402
from components.data import catalog  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.sampling import sample_query_ids  # noqa: E402
from components.evaluation.metrics import METRIC_LABELS, mean_metrics, per_query_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--dataset", default=None, help="data.name (default: params.yaml's)")
    args = parser.parse_args()
    params = load_params(args.params, {"data.name": args.dataset} if args.dataset else None)
    data = params.data
    dataset = load_beir(data.dataset_dir())
    train = load_beir(data.train_dataset_dir()) if data.trains_elsewhere else dataset
    counts = Counter(d for judged in train.qrels_dict(data.train_split).values()
                     for d, grade in judged.items() if grade > 0)
    # Most often relevant first; documents never relevant in training after them, in id order.
    order = [d for d, _ in counts.most_common()]
    order += sorted(set(dataset.corpus_dict()) - set(order))
    ranking = [(d, float(len(order) - i)) for i, d in enumerate(order[:100])]

    qrels = dataset.qrels_dict(data.test_split)
    metrics = catalog.eval_metrics(data.name, params.evaluate.metrics)
    sample = sample_query_ids(qrels, data.eval_queries, params.seed)
    print(f"{data.name}: prior from {data.train_name}/{data.train_split} "
          f"({sum(counts.values())} relevant judgements, {len(counts)} distinct documents)")
    print("| query set | queries | " + " | ".join(METRIC_LABELS.get(m, m) for m in metrics)
          + " |")
    print("|---|---|" + "---|" * len(metrics))
    decoded = sample[: params.dgr.eval_queries or None]  # where GR and DGR are scored
    for name, qids in (("all", sorted(qrels)), ("evaluation sample", sample),
                       ("GR/DGR sample", decoded)):
        run = {q: ranking for q in qids}
        means = mean_metrics(per_query_metrics(run, qrels, metrics, qids))
        print(f"| {name} | {len(qids)} | "
              + " | ".join(f"{means[m]:.4f}" for m in metrics) + " |")


if __name__ == "__main__":
    main()

"""Rabtriever learning curve: rerank quality as the number of distillation queries grows.

    .venv/bin/python scripts/jepa_learning_curve.py [--queries 60 120 300] [--params params.yaml]

Needs the pipeline's `rank_lists` and `distill_jepa` outputs (the teacher, its stored states for
the stage's training queries, the document index). The stage's training queries come first;
more are drawn (seeded) from the training split, and the teacher scores their BM25
top-`rank_lists.train_depth` on demand, as `rank_lists` does for its own (the slow part: one
teacher forward per pair, ~0.3 s on a 2-core CPU). Those states are cached under
`outputs/<dataset>/jepa_curve/`, so a rerun only trains and evaluates.

For each size N, a fresh predictor trains on the first N queries' pools with the stage's
`jepa` parameters and reranks BM25's top-`rank_lists.depth` of the evaluation queries
(nDCG@10 by pytrec_eval), the figure the stage reports as `Rabtriever (rerank@K)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from components.atomic import atomic_path  # noqa: E402
from components.config import load_params  # noqa: E402
from components.data.sampling import sample_query_ids  # noqa: E402
from components.layout import Layout, run_key  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from components.training.jepa_trainer import (  # noqa: E402
    JepaTrainingData,
    TeacherPairs,
    build_training_data,
    train_predictor,
)
from scripts.jepa_eval import StudentBench  # noqa: E402

TENSORS = ("query_index", "doc_index", "hidden", "logits", "logit_ids", "scores")


def save_data(folder: Path, data: JepaTrainingData) -> None:
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        tensors = {name: getattr(data.pairs, name).contiguous() for name in TENSORS}
        save_file({**tensors, "query_embs": data.query_embs, "doc_embs": data.doc_embs},
                  tmp / "data.safetensors")
        (tmp / "ids.json").write_text(json.dumps(
            {"query_ids": list(data.query_ids), "doc_ids": list(data.doc_ids)}))


def load_data(folder: Path) -> JepaTrainingData:
    tensors = load_file(folder / "data.safetensors")
    ids = json.loads((folder / "ids.json").read_text())
    return JepaTrainingData(
        query_embs=tensors["query_embs"], doc_embs=tensors["doc_embs"],
        pairs=TeacherPairs(**{name: tensors[name] for name in TENSORS}),
        query_ids=ids["query_ids"], doc_ids=ids["doc_ids"])


def concat(first: JepaTrainingData, second: JepaTrainingData) -> JepaTrainingData:
    """Both sets of pairs; the second's rows are shifted past the first's embeddings."""
    a, b = first.pairs, second.pairs
    q_shift, d_shift = len(first.query_embs), len(first.doc_embs)
    return JepaTrainingData(
        query_embs=torch.cat([first.query_embs, second.query_embs]),
        doc_embs=torch.cat([first.doc_embs, second.doc_embs]),
        pairs=TeacherPairs(
            query_index=torch.cat([a.query_index, b.query_index + q_shift]),
            doc_index=torch.cat([a.doc_index, b.doc_index + d_shift]),
            **{name: torch.cat([getattr(a, name), getattr(b, name)])
               for name in ("hidden", "logits", "logit_ids", "scores")}),
        query_ids=list(first.query_ids) + list(second.query_ids),
        doc_ids=list(first.doc_ids) + list(second.doc_ids))


def first_queries(data: JepaTrainingData, n: int) -> JepaTrainingData:
    """Only the pairs of the first n query rows (embeddings are kept whole; rows stay valid)."""
    keep = data.pairs.query_index < n
    pairs = data.pairs
    return JepaTrainingData(
        query_embs=data.query_embs, doc_embs=data.doc_embs,
        pairs=TeacherPairs(**{name: getattr(pairs, name)[keep] for name in TENSORS}),
        query_ids=data.query_ids, doc_ids=data.doc_ids)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--queries", type=int, nargs="+", default=[60, 120, 300])
    args = parser.parse_args()
    params = load_params(args.params)
    layout = Layout(params.data.name)
    if params.data.trains_elsewhere:
        sys.exit(f"{params.data.name} trains on {params.data.train_name}: run the curve there")
    bench = StudentBench.load(params)
    retriever, queries, texts = bench.retriever, bench.queries, bench.texts
    train_split = params.data.train_split
    data = bench.stage_training_data()
    train_qrels = bench.dataset.qrels_dict(train_split)

    # More training queries: the stage's first, then a seeded sample of the rest.
    stage_qids = set(data.query_ids)
    bm25_train, _ = read_trec_run(layout.run_dir("bm25") / f"{train_split}.trec")
    wanted = max(args.queries) - len(stage_qids)
    rest = [q for q in train_qrels if q not in stage_qids and bm25_train.get(q)]
    extra_qids = sample_query_ids(rest, wanted, params.seed) if wanted > 0 else []
    # Keyed by what the states depend on: the queries, the depth and the teacher (whose scores
    # in pairs.parquet change whenever it is retrained).
    teacher_scores = hashlib.sha256((layout.rank_lists_dir / "pairs.parquet").read_bytes())
    cache = layout.root / "jepa_curve" / run_key(
        {"queries": extra_qids, "depth": params.rank_lists.train_depth,
         "teacher": teacher_scores.hexdigest()})
    if extra_qids and not (cache / "data.safetensors").exists():
        started = time.perf_counter()
        pools = {q: [d for d, _ in bm25_train[q][: params.rank_lists.train_depth]]
                 for q in extra_qids}
        extra = build_training_data(retriever, {q: queries[q] for q in extra_qids}, texts, pools,
                                    top_k=params.rank_lists.top_k_logits,
                                    batch_size=params.rank_lists.batch_size)
        save_data(cache, extra)
        print(f"teacher states for {len(extra_qids)} more queries, "
              f"{len(extra.pairs.query_index)} pairs ({time.perf_counter() - started:.0f}s)",
              flush=True)
    if extra_qids:
        data = concat(data, load_data(cache))

    depth = bench.depth

    lines = [f"| training queries | pairs | train s | agreement (train pools) | "
             f"rerank@{depth} nDCG@10 |", "|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for n in sorted(args.queries):
        subset = first_queries(data, n)
        predictor = bench.fresh_predictor()
        started = time.perf_counter()
        result = train_predictor(predictor, retriever.scorer, subset, bench.train_params())
        seconds = time.perf_counter() - started
        ndcg = bench.rerank_ndcg(predictor)
        lines.append(f"| {min(n, len(data.query_ids))} | {len(subset.pairs.query_index)} | "
                     f"{seconds:.0f} | {result.final_agreement:.3f} | {ndcg:.4f} |")
        print(lines[-1], flush=True)
    (layout.root / "jepa_curve" / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

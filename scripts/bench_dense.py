"""Benchmark the dense baseline end to end on a BEIR dataset (SciFact by default).

    python scripts/bench_dense.py DATASET_DIR OUTPUT_DIR [--split test] [--k 100]

Encodes the corpus with the bundled all-MiniLM-L6-v2, builds and saves the FAISS index,
retrieves the split's queries, writes the run, and prints nDCG@10 (pytrec_eval
`ndcg_cut_10`), the corpus encode time, per-query latency (median / p95, one query at a
time: encode + search) and the index size on disk. The same numbers go to
OUTPUT_DIR/bench_dense.json. Published reference (MTEB leaderboard, SciFact test):
nDCG@10 = 0.6451.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.settings import configure_environment  # noqa: E402

configure_environment()

import pytrec_eval  # noqa: E402

from components.runs import write_trec_run  # noqa: E402
from components.search.dense import DenseIndex, index_size_bytes, load_encoder  # noqa: E402

MTEB_SCIFACT_NDCG10 = 0.6451


def read_jsonl(path: Path) -> dict[str, dict]:
    with open(path, encoding="utf-8") as handle:
        records = (json.loads(line) for line in handle if line.strip())
        return {str(r["_id"]): r for r in records}


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as handle:
        next(handle)  # header: query-id corpus-id score
        for line in handle:
            qid, docid, grade = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[docid] = int(grade)
    return qrels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    corpus = read_jsonl(args.dataset_dir / "corpus.jsonl")
    qrels = read_qrels(args.dataset_dir / "qrels" / f"{args.split}.tsv")
    all_queries = read_jsonl(args.dataset_dir / "queries.jsonl")
    queries = {qid: all_queries[qid]["text"] for qid in qrels}
    print(f"{len(corpus)} docs, {len(queries)} {args.split} queries", flush=True)

    encoder = load_encoder()
    start = time.perf_counter()
    index = DenseIndex.build(corpus, encoder, batch_size=args.batch_size, progress=True)
    encode_s = time.perf_counter() - start
    index_dir = index.save(args.output_dir / "index")

    start = time.perf_counter()
    run = index.search(queries, k=args.k, batch_size=args.batch_size)
    batch_search_s = time.perf_counter() - start
    write_trec_run(args.output_dir / f"run.dense.{args.split}.trec", run, tag="minilm-dense")

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"})
    # pytrec_eval takes qid -> {docid: score}; it ranks by score itself.
    per_query = evaluator.evaluate({q: dict(ranked) for q, ranked in run.items()})
    ndcg10 = float(np.mean([m["ndcg_cut_10"] for m in per_query.values()]))

    # Serving latency: one query at a time, query encoding included.
    latencies = []
    for qid, text in queries.items():
        start = time.perf_counter()
        index.search({qid: text}, k=args.k)
        latencies.append(time.perf_counter() - start)
    latencies_ms = np.array(latencies) * 1000

    results = {
        "split": args.split,
        "num_docs": len(index),
        "num_queries": len(queries),
        "ndcg_cut_10": round(ndcg10, 4),
        "mteb_reference_ndcg_cut_10": MTEB_SCIFACT_NDCG10,
        "encode_corpus_s": round(encode_s, 1),
        "encode_docs_per_s": round(len(index) / encode_s, 1),
        "batch_search_s": round(batch_search_s, 2),
        "latency_ms_median": round(float(np.median(latencies_ms)), 2),
        "latency_ms_p95": round(float(np.percentile(latencies_ms, 95)), 2),
        "index_size_bytes": index_size_bytes(index_dir),
    }
    (args.output_dir / "bench_dense.json").write_text(json.dumps(results, indent=2) + "\n")
    for key, value in results.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()

"""Stage `bm25`: a Pyserini Lucene index of the corpus and BM25 runs of the test topics,
the held-out dev queries and the training queries (components/data/splits.py)."""

from __future__ import annotations

import time

import mlflow

from components import tracking
from components.config import load_params
from components.data.beir import load_beir
from components.data.splits import HELDOUT, QuerySplits
from components.evaluation.costs import folder_bytes, time_each, write_cost
from components.layout import Layout
from components.runs import write_trec_run
from components.search import bm25
from flows._stage import run_cli, stage_flow


@stage_flow("bm25")
def bm25_stage(params_path: str = "params.yaml") -> None:
    params = load_params(params_path)
    cfg, layout = params.bm25, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"data": params.data.model_dump(), "bm25": cfg.model_dump()}
    with tracking.stage_run("bm25", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir, qrels=False)
        started = time.perf_counter()
        bm25.build_index(dataset.corpus_dict(), layout.bm25_index, threads=cfg.threads)
        index_seconds = time.perf_counter() - started
        print(f"indexed {len(dataset.corpus)} documents in {index_seconds:.1f}s")
        queries = dataset.queries_dict()
        splits = QuerySplits.load(layout.splits_file)
        metrics = {"index_seconds": index_seconds,
                   "index_bytes": folder_bytes(layout.bm25_index)}
        # The evaluated runs (test topics, held-out dev queries) and the training queries'
        # run that the teacher mines negatives from; evaluate scores runs/bm25/<split>.trec
        # for the test split and `heldout` only.
        searches = [(splits.test_split, splits.test), (HELDOUT, splits.dev_evaluated)]
        if not params.data.trains_elsewhere:
            searches.append((splits.train_split, splits.train + splits.heldout))
        for split, qids in searches:
            if not qids:
                continue
            started = time.perf_counter()
            run = bm25.search(layout.bm25_index, {q: queries[q] for q in qids}, cfg.depth,
                              cfg.k1, cfg.b, cfg.threads)
            seconds = time.perf_counter() - started
            path = layout.run_dir("bm25") / f"{split}.trec"
            write_trec_run(path, run, tag="BM25", topics=qids)
            metrics[f"{split}_search_ms_per_query"] = 1000 * seconds / len(qids)
            print(f"{split}: {len(qids)} queries, top-{cfg.depth}, {seconds:.1f}s -> {path}")
        # Per-query latency: one query at a time on one thread, as a user would send them.
        searcher = bm25.open_searcher(layout.bm25_index, cfg.k1, cfg.b)
        _, seconds = time_each(splits.evaluated,
                               lambda q: searcher.search(queries[q], k=cfg.depth))
        cost = write_cost(layout.run_dir("bm25"), seconds, metrics["index_bytes"],
                          "Lucene index (Pyserini)")
        metrics.update({f"latency_{k}": v for k, v in cost["latency"].items()})
        if params.data.trains_elsewhere:
            # The teacher mines negatives (and rank_lists scores candidates) for another
            # dataset's training queries: BM25 over that dataset's own corpus.
            train = load_beir(params.data.train_dataset_dir(), qrels=False)
            index = layout.train_bm25_index(params.data.train_name)
            bm25.build_index(train.corpus_dict(), index, threads=cfg.threads)
            qids = splits.train + splits.heldout
            train_queries = train.queries_dict()
            run = bm25.search(index, {q: train_queries[q] for q in qids},
                              cfg.depth, cfg.k1, cfg.b, cfg.threads)
            path = layout.train_bm25_run(params.data.train_name, splits.train_split)
            write_trec_run(path, run, tag="BM25", topics=qids)
            print(f"training data {params.data.train_name}/{splits.train_split}: {len(run)} "
                  f"queries -> {path}")
        mlflow.log_metrics(metrics)


if __name__ == "__main__":
    run_cli(bm25_stage)

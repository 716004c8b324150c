"""Stage `dense`: the all-MiniLM-L6-v2 + FAISS baseline over the whole corpus.

Builds the exact inner-product index of every document, writes the runs of the test topics
and the held-out dev queries, and times the evaluated test queries one at a time (encode +
search, what a user waits for) into `runs/dense/cost.json`.
"""

from __future__ import annotations

import time

import mlflow

from components import tracking
from components.config import load_params
from components.data.beir import load_beir
from components.data.splits import HELDOUT, QuerySplits
from components.device import use_device
from components.evaluation.costs import folder_bytes, time_each, write_cost
from components.layout import Layout
from components.progress import enabled as progress_enabled
from components.runs import write_trec_run
from components.search.dense import MODEL_NAME, DenseIndex, load_encoder
from components.search.faiss_index import IndexSpec
from flows._stage import run_cli, stage_flow


@stage_flow("dense")
def dense_stage(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    cfg, layout = params.dense, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"data": params.data.model_dump(), "dense": cfg.model_dump()}
    with tracking.stage_run("dense", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir, qrels=False)
        corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
        started = time.perf_counter()
        encoder = load_encoder(device=str(use_device(params.device)))
        spec = IndexSpec(kind=cfg.index, ivf_lists=cfg.ivf_lists, nprobe=cfg.nprobe,
                         hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search)
        index = DenseIndex.build(corpus, encoder, batch_size=cfg.batch_size, bf16=cfg.bf16,
                                 max_tokens=cfg.max_tokens, progress=progress_enabled(),
                                 spec=spec)
        metrics = {"encode_seconds": time.perf_counter() - started}
        index_dir = index.save(layout.root / "dense" / "index")
        metrics["index_bytes"] = folder_bytes(index_dir)
        print(f"encoded {len(index)} documents with {MODEL_NAME} in "
              f"{metrics['encode_seconds']:.0f}s ({metrics['index_bytes'] / 1e6:.1f} MB "
              f"{cfg.index} index)")
        # The evaluated splits only: nothing trains on the dense run.
        splits = QuerySplits.load(layout.splits_file)
        for split, qids in ((splits.test_split, splits.test), (HELDOUT, splits.dev_evaluated)):
            if not qids:
                continue
            run = index.search({q: queries[q] for q in qids}, k=cfg.depth,
                               batch_size=cfg.batch_size)
            write_trec_run(layout.run_dir("dense") / f"{split}.trec", run, tag="MiniLM-L6",
                           topics=qids)
            print(f"{split}: {len(qids)} queries, top-{cfg.depth}")
        _, seconds = time_each(splits.evaluated,
                               lambda q: index.search({q: queries[q]}, k=cfg.depth))
        cost = write_cost(layout.run_dir("dense"), seconds, metrics["index_bytes"],
                          f"FAISS {cfg.index} index of MiniLM embeddings")
        metrics.update({f"latency_{k}": v for k, v in cost["latency"].items()})
        mlflow.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    run_cli(dense_stage)

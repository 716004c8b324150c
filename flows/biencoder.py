"""Stage `biencoder`: the RepLLaMA-style bi-encoder baseline on the same base LLM.

Trained contrastively (in-batch + BM25 hard negatives) on the teacher's training queries, then
evaluated exactly like Rabtriever: reranking the BM25 top-K of the evaluation queries
(`runs/biencoder_rerank`) and retrieving over the same corpus (`runs/biencoder_full`).

It is off by default on CPU (`biencoder.enabled: false`; its cost is recorded in
docs/studies.md): the stage then only writes a note into its outputs, so the pipeline keeps
the same shape whichever way it is set.
"""

from __future__ import annotations

import json
import shutil
import time

import mlflow

from components import tracking
from components.atomic import write_text_atomic
from components.biencoder.model import EMBEDDINGS_FILE, BiEncoder, passage_text
from components.biencoder.training import train_biencoder
from components.config import load_params
from components.data.beir import load_beir
from components.data.judgements import read_judgements
from components.data.sampling import sample_query_ids
from components.data.splits import HELDOUT, QuerySplits
from components.device import use_device
from components.evaluation.costs import folder_bytes, read_cost, time_each, write_cost
from components.layout import Layout, run_key
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.runs import read_trec_run, write_trec_run
from components.teacher.data import build_groups
from flows._stage import StageFailed, run_cli, stage_flow

SYSTEMS = ("biencoder_rerank", "biencoder_full")
DISABLED_NOTE = ("The bi-encoder baseline is off in this profile (`biencoder.enabled: false`); "
                 "see docs/studies.md for its measured figures.\n")


def write_disabled(layout: Layout) -> None:
    """Outputs that say the stage was skipped (DVC needs them; evaluate finds no run here)."""
    for folder in (layout.root / "biencoder", *(layout.run_dir(s) for s in SYSTEMS)):
        if folder.exists():
            shutil.rmtree(folder)
        write_text_atomic(folder / "DISABLED.md", DISABLED_NOTE)


@stage_flow("biencoder")
def biencoder_stage(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    cfg, layout = params.biencoder, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"biencoder": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("biencoder", params.tracking.experiment, section, dataset_dir):
        if not cfg.enabled:
            write_disabled(layout)
            print(DISABLED_NOTE.strip())
            return {"enabled": False}
        dataset = load_beir(dataset_dir, qrels=False)
        corpus, queries = dataset.corpus_dict(), dataset.queries_dict()
        # The training data: data.train_name's (usually this dataset's) training queries,
        # never the held-out dev ones.
        splits = QuerySplits.load(layout.splits_file)
        train_data = load_beir(params.data.train_dataset_dir(), qrels=False)
        split = params.data.train_split
        qrels = read_judgements(params.data.train_dataset_dir(), split, splits.train)
        keep = set(sample_query_ids(qrels, params.data.train_queries, params.seed))
        bm25_train, _ = read_trec_run(layout.train_bm25_run(params.data.train_name, split))
        groups = build_groups(train_data.corpus_dict(), train_data.queries_dict(),
                              {q: r for q, r in qrels.items() if q in keep}, bm25_train,
                              n_negatives=cfg.negatives, depth=cfg.mining_depth,
                              seed=params.seed)
        if not groups:
            raise StageFailed("no training groups: no training query has a relevant document")
        encoder = BiEncoder(load_causal_lm(layout.base_model, device=use_device(params.device)),
                            load_tokenizer(layout.base_model),
                            max_doc_tokens=cfg.max_doc_tokens,
                            max_query_tokens=cfg.max_query_tokens, bf16=cfg.bf16)
        # Checkpoints (not a DVC output) resume only a run with the same settings and data.
        checkpoints = layout.checkpoints("biencoder") / run_key(
            {"biencoder": cfg.model_dump(), "seed": params.seed, "data": params.data.model_dump(),
             "groups": len(groups)})

        def log_step(step):
            mlflow.log_metrics({"loss": step.loss, "lr": step.lr}, step=step.step)
            print(f"step {step.step}/{step.total_steps} loss {step.loss:.4f} "
                  f"({step.elapsed_s:.0f}s)")

        started = time.perf_counter()
        result = train_biencoder(encoder, groups, cfg, checkpoints, on_step=log_step,
                                 seed=params.seed)
        metrics = {"train_seconds": time.perf_counter() - started, "train_groups": len(groups)}
        if not result.completed:
            raise StageFailed(f"training stopped at step {result.steps_done}/{result.total_steps}")

        doc_ids = sorted(corpus)  # the whole corpus: FAISS searches it exactly
        started = time.perf_counter()
        encoder.index({d: passage_text(corpus[d]) for d in doc_ids}, cfg.encode_batch_size)
        metrics["encode_seconds"] = time.perf_counter() - started
        out = encoder.save(layout.root / "biencoder")
        shutil.rmtree(layout.checkpoints("biencoder"), ignore_errors=True)  # done: no resume

        depth, timings = params.rank_lists.depth, {}
        for split, qids in ((splits.test_split, splits.evaluated), (HELDOUT, splits.dev_evaluated)):
            if not qids:
                continue
            bm25_run, _ = read_trec_run(layout.run_dir("bm25") / f"{split}.trec")
            ranked, timings[("rerank", split)] = time_each(qids, lambda q, r=bm25_run: (
                encoder.rerank({q: queries[q]}, {q: [d for d, _ in r.get(q, [])[:depth]]})[q]))
            write_trec_run(layout.run_dir("biencoder_rerank") / f"{split}.trec",
                           dict(zip(qids, ranked, strict=True)), "BiEncoder-rerank", topics=qids)
            ranked, timings[("full", split)] = time_each(
                qids, lambda q: encoder.search({q: queries[q]}, cfg.full_k)[q])
            write_trec_run(layout.run_dir("biencoder_full") / f"{split}.trec",
                           dict(zip(qids, ranked, strict=True)), "BiEncoder-full", topics=qids)
        rerank_s = timings[("rerank", splits.test_split)]
        full_s = timings[("full", splits.test_split)]
        embeddings = folder_bytes(out / EMBEDDINGS_FILE)
        bm25_cost = read_cost(layout.run_dir("bm25"))
        bm25_s = bm25_cost["latency"]["median_ms"] / 1000 if bm25_cost else 0.0
        write_cost(layout.run_dir("biencoder_rerank"), [s + bm25_s for s in rerank_s],
                   embeddings + folder_bytes(layout.bm25_index),
                   f"Lucene index + {len(doc_ids)} document embeddings; rerank top-{depth}")
        write_cost(layout.run_dir("biencoder_full"), full_s, embeddings,
                   f"FAISS flat index of {len(doc_ids)} document embeddings (whole corpus)")
        metrics.update({"corpus_docs": len(doc_ids), "final_loss": result.losses[-1]})
        mlflow.log_metrics(metrics)
        print(json.dumps(metrics, indent=2))
    return metrics


if __name__ == "__main__":
    run_cli(biencoder_stage)

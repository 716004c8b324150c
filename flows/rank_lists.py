"""Stage `rank_lists`: the trained teacher rescores BM25 candidates.

- Test queries (`data.eval_queries`, seeded) and the held-out dev queries: BM25
  top-`rank_lists.depth` rescored, the `BM25 → teacher` runs.
- Training queries (`rank_lists.train_queries`, seeded, never the held-out ones): BM25
  top-`rank_lists.train_depth`
  rescored; these rank lists and the teacher's per-pair states (final hidden state at the
  answer position, Yes/No logits, top-k vocabulary logits) are the distillation data, stored
  once so no student recomputes the teacher for a pair it already scored.
- Every scored document's own states as Rabtriever encodes it (`rank_lists.document_layers`;
  the teacher reads the document first, so its pass holds them): `rabtriever` then encodes
  only the documents the teacher never read (`components/rabtriever/pair_documents.py`).
"""

from __future__ import annotations

import shutil
import time

import mlflow
import pandas as pd
import torch
from safetensors.torch import save_file

from components import tracking
from components.atomic import atomic_path
from components.config import load_params
from components.data.beir import load_beir
from components.data.judgements import read_judgements
from components.data.sampling import sample_query_ids
from components.data.splits import HELDOUT, QuerySplits
from components.device import use_device
from components.evaluation.costs import folder_bytes, read_cost, time_each, write_cost
from components.fusion import choose_weight, interpolate, write_weight
from components.layout import Layout
from components.llm.prompts import PromptTemplate
from components.rabtriever.pair_documents import (
    PairDocumentStates,
    encoding_meta,
    model_fingerprint,
)
from components.runs import read_trec_run, write_trec_run
from components.teacher.data import document_text
from components.teacher.reranker import LLMReranker
from flows._stage import StageFailed, run_cli, stage_flow


def candidate_pairs(run, qids, depth, corpus, queries):
    """[(qid, docid)] and the matching (document, query) texts, BM25 order per query."""
    keys, pairs = [], []
    for qid in qids:
        for docid, _ in run.get(qid, [])[:depth]:
            keys.append((qid, docid))
            pairs.append((document_text(corpus[docid]), queries[qid]))
    return keys, pairs


def to_run(keys, scores) -> dict:
    run: dict = {}
    for (qid, docid), score in zip(keys, scores, strict=True):
        run.setdefault(qid, []).append((docid, float(score)))
    return run


def first_stage_weight(params, splits: QuerySplits, runs: dict) -> float:
    """`rank_lists.first_stage_weight`, or with `auto` the grid weight whose mixed teacher
    ranking scores best on the held-out dev queries (their judgements, never test ones);
    recorded in `rank_lists/first_stage_weight.json` for the stages after this one."""
    setting = params.rank_lists.first_stage_weight
    layout = Layout(params.data.name)
    if setting != "auto":
        write_weight(layout.rank_lists_dir, setting, float(setting))
        return float(setting)
    if HELDOUT not in runs:
        raise StageFailed("first_stage_weight: auto chooses on the held-out dev queries, and "
                          "there are none (data.dev_queries is 0): set a number instead")
    bm25_run, teacher_run = runs[HELDOUT]
    metric = params.evaluate.primary
    qrels = read_judgements(params.data.dataset_dir(), splits.train_split, splits.dev_evaluated)
    qids = [q for q in splits.dev_evaluated if q in qrels]
    weight, dev = choose_weight(bm25_run, teacher_run, qrels, metric, qids)
    write_weight(layout.rank_lists_dir, setting, weight, dev, metric)
    mlflow.log_dict({str(w): m for w, m in dev.items()}, "first_stage_weight_dev.json")
    print(f"first_stage_weight: auto -> {weight:g} (dev {metric} {dev[weight]:.4f} over "
          f"{len(qids)} queries; reranker alone {dev[0.0]:.4f}, BM25 {dev[1.0]:.4f})")
    return weight


@stage_flow("rank_lists")
def rank_lists(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    cfg, layout = params.rank_lists, Layout(params.data.name)
    dataset_dir = params.data.dataset_dir()
    section = {"rank_lists": cfg.model_dump(), "data": params.data.model_dump()}
    with tracking.stage_run("rank_lists", params.tracking.experiment, section, dataset_dir):
        dataset = load_beir(dataset_dir, qrels=False)
        train = (load_beir(params.data.train_dataset_dir(), qrels=False)
                 if params.data.trains_elsewhere else dataset)
        reranker = LLMReranker.from_pretrained(
            layout.teacher_model, template=PromptTemplate.load(params.teacher.task),
            max_doc_tokens=params.teacher.max_doc_tokens, bf16=params.teacher.bf16,
            device=use_device(params.device))
        frames, metrics = [], {}
        documents = None
        if cfg.document_layers is not None:
            documents = PairDocumentStates(reranker.tokenizer, reranker.prompts,
                                           cfg.document_layers,
                                           reranker.model.config.num_hidden_layers)
        splits = QuerySplits.load(layout.splits_file)
        bm25_dir = layout.run_dir("bm25")
        # (split, queries, depth, what is kept, their dataset, BM25 run): the evaluated test
        # queries (a latency sample one at a time), the held-out dev queries in length buckets,
        # and a sample of the training queries with the teacher's states (the distillation data).
        jobs = [(splits.test_split, splits.evaluated, cfg.depth, "timed", dataset,
                 bm25_dir / f"{splits.test_split}.trec"),
                (HELDOUT, splits.dev_evaluated, cfg.depth, "scores", dataset,
                 bm25_dir / f"{HELDOUT}.trec"),
                (splits.train_split, sample_query_ids(splits.train, cfg.train_queries,
                                                      params.seed),
                 cfg.train_depth, "states", train,
                 layout.train_bm25_run(params.data.train_name, splits.train_split))]
        scored = []  # (split, qids, depth, kept, BM25 run, pair keys, scores, latencies)
        for split, qids, depth, kept, source, run_path in jobs:
            if not qids:
                continue
            keep_states = kept == "states"
            bm25_run, _ = read_trec_run(run_path)
            keys, pairs = candidate_pairs(bm25_run, qids, depth, source.corpus_dict(),
                                          source.queries_dict())
            started = time.perf_counter()
            latencies = []
            if keep_states:
                states = reranker.forward_pair_states(pairs, cfg.batch_size, cfg.top_k_logits,
                                                      documents)
                scores = states.scores.numpy()
                tensors = {"hidden": states.hidden.contiguous(),
                           "answer_logits": states.answer_logits.contiguous()}
                if states.topk_ids is not None:
                    tensors["topk_ids"] = states.topk_ids.to(torch.int64).contiguous()
                    tensors["topk_logits"] = states.topk_logits.contiguous()
                with atomic_path(layout.rank_lists_dir / f"{split}_states.safetensors") as tmp:
                    save_file(tensors, str(tmp))
            elif kept == "scores":
                scores = reranker.score_pairs(pairs, cfg.batch_size, documents)
            else:
                # The first `latency_queries` test queries are scored one query at a time (its K
                # candidates, bucketed by length), so each one's wall time is the reranking
                # latency a user sees; the rest in one call, bucketed across queries (faster).
                by_query: dict[str, list] = {q: [] for q in qids}
                for (qid, _), pair in zip(keys, pairs, strict=True):
                    by_query[qid].append(pair)
                timed, bulk = qids[: cfg.latency_queries], qids[cfg.latency_queries :]
                per_query, latencies = time_each(
                    timed, lambda q, groups=by_query: reranker.score_pairs(groups[q],
                                                                           cfg.batch_size,
                                                                           documents))
                bulk_pairs = [pair for q in bulk for pair in by_query[q]]
                bulk_scores = iter(reranker.score_pairs(bulk_pairs, cfg.batch_size, documents)
                                   if bulk_pairs else [])
                per_query += [[next(bulk_scores) for _ in by_query[q]] for q in bulk]
                # `keys` lists the pairs query by query in `qids` order, as here.
                scores = [score for query_scores in per_query for score in query_scores]
            seconds = time.perf_counter() - started
            scored.append((split, qids, depth, kept, bm25_run, keys, scores, latencies))
            metrics[f"{split}_pairs"] = len(pairs)
            metrics[f"{split}_pairs_per_s"] = len(pairs) / seconds
            print(f"{split}: {len(qids)} queries x top-{depth} = {len(pairs)} pairs in "
                  f"{seconds:.0f}s ({len(pairs) / seconds:.1f} pairs/s)")
        weight = first_stage_weight(params, splits, {split: (bm25_run, to_run(keys, scores))
                                                     for split, _, _, _, bm25_run, keys, scores,
                                                     _ in scored})
        metrics["first_stage_weight"] = weight
        for split, qids, depth, kept, bm25_run, keys, scores, latencies in scored:
            # The ranking the teacher outputs, mixed with BM25's when the weight is > 0; the
            # table below keeps the LLM's own scores (what the students distil).
            run = interpolate(bm25_run, to_run(keys, scores), weight)
            write_trec_run(layout.run_dir("teacher") / f"{split}.trec", run, tag="BM25->teacher",
                           topics=qids)
            if kept == "timed":
                # Online cost of `BM25 -> teacher`: the teacher's time per query plus BM25's
                # own (from the bm25 stage); it searches the BM25 index.
                bm25_cost = read_cost(layout.run_dir("bm25"))
                bm25_ms = bm25_cost["latency"]["median_ms"] / 1000 if bm25_cost else 0.0
                write_cost(layout.run_dir("teacher"), [s + bm25_ms for s in latencies],
                           folder_bytes(layout.bm25_index),
                           f"Lucene index (Pyserini); rerank top-{depth}")
            frame = pd.DataFrame(keys, columns=["query_id", "doc_id"]).assign(
                split=split, score=scores, bm25_rank=[r for q in qids
                                                      for r in range(1, len(run.get(q, [])) + 1)])
            frame["rank"] = frame.groupby("query_id")["score"].rank(ascending=False,
                                                                    method="first").astype(int)
            frame["state_row"] = range(len(frame)) if kept == "states" else -1
            frames.append(frame)
        documents_dir = layout.rank_lists_dir / "documents"
        shutil.rmtree(documents_dir, ignore_errors=True)  # never a stale set from another teacher
        if documents is not None:
            meta = encoding_meta(reranker.prompts, reranker.model.config.hidden_size,
                                 reranker.bf16, model_fingerprint(layout.teacher_model))
            documents.save(documents_dir, meta)
            metrics["documents_kept"] = len(documents)
            print(f"kept {len(documents)} documents' states for Rabtriever "
                  f"({documents.unmatched} left to it: BPE merged their last token)")
        with atomic_path(layout.rank_lists_dir / "pairs.parquet") as tmp:
            pd.concat(frames, ignore_index=True).to_parquet(tmp, index=False)
        mlflow.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    run_cli(rank_lists)

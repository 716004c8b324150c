"""Shared by the Rabtriever benchmark scripts: rerank quality of a trained predictor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.models.rabtriever import Predictor, Rabtriever
from components.runs import Run


def rerank_ndcg(
    retriever: Rabtriever,
    predictor: Predictor,
    qids: Sequence[str],
    query_embs: torch.Tensor,
    bm25: Run,
    qrels: Mapping[str, Mapping[str, int]],
    depth: int,
) -> float:
    """Mean nDCG@10 (pytrec_eval) of `predictor` reordering BM25's top-`depth` per query.

    `query_embs[i]` is query `qids[i]` encoded alone; candidates come from the retriever's
    document index, as in the stage's `Rabtriever (rerank@K)` row.
    """
    retriever.predictor = predictor.eval()
    row = {d: i for i, d in enumerate(retriever.doc_ids)}
    run = {}
    for qid, emb in zip(qids, query_embs, strict=True):
        cands = [d for d, _ in bm25.get(qid, [])[:depth] if d in row]
        scores = retriever.score(emb, retriever.doc_embeddings[[row[d] for d in cands]])
        run[qid] = list(zip(cands, scores.tolist(), strict=True))
    metrics = per_query_metrics(run, qrels, ["ndcg_cut_10"], list(qids))
    return mean_metrics(metrics)["ndcg_cut_10"]

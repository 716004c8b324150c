"""The teacher's dev curve: rerank a fixed sample of held-out dev queries during training.

Every `teacher.curve_every` optimizer steps (and after the last) the model being trained
reranks the first stage's top `rank_lists.depth` of `teacher.curve_queries` held-out dev queries
(training queries no training stage sees, `components.data.splits`), and the primary metric of
that rerank is reported with the loss. It is the same scoring function as the rerank
evaluation (`answer_logits` + `yes_no_score`), so the curve's last point and the `rank_lists`
dev run differ only by the query sample. Test judgements are never read here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean

import torch
from torch import nn

from components.evaluation.metrics import per_query_metrics
from components.llm.padding import left_pad
from components.llm.prompts import PromptBuilder
from components.ranker import ranked
from components.runs import Run
from components.teacher.reranker import yes_no_score


@dataclass
class DevSample:
    """What the curve reranks: dev queries, their first-stage candidates and judgements."""

    queries: Mapping[str, str]  # qid -> text
    candidates: Run  # first-stage run, cut to `depth` per query
    texts: Mapping[str, str]  # docid -> the text the teacher reads
    qrels: Mapping[str, Mapping[str, int]]
    metric: str  # trec_eval key (evaluate.primary)
    depth: int  # candidates reranked per query (rank_lists.depth)


class DevCurve:
    """Call with the training module (tokens in, answer logits out): {"dev_<metric>": mean}."""

    def __init__(self, sample: DevSample, prompts: PromptBuilder, pad_id: int,
                 batch_size: int = 8):
        queries, depth = sample.queries, sample.depth
        self.rows = [(qid, docid) for qid in sorted(queries)
                     for docid, _ in list(sample.candidates.get(qid, ()))[:depth]]
        pairs = [(sample.texts[docid], queries[qid]) for qid, docid in self.rows]
        encoded = prompts.encode_pairs(pairs)
        # Longest first, so each batch holds rows of similar length (little padding).
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
        self.batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        self.encoded, self.pad_id = encoded, pad_id
        self.qids = sorted(queries)
        self.qrels = {q: dict(sample.qrels.get(q, {})) for q in self.qids}
        self.metric = sample.metric

    def __len__(self) -> int:
        return len(self.rows)

    @torch.no_grad()
    def __call__(self, module: nn.Module) -> dict[str, float]:
        device = next(module.parameters()).device
        scores = torch.empty(len(self.rows))
        for index in self.batches:
            input_ids, mask = left_pad([self.encoded[i] for i in index], self.pad_id)
            logits = module(input_ids.to(device), mask.to(device))
            scores[index] = yes_no_score(logits).float().cpu()
        run: dict[str, list[tuple[str, float]]] = {q: [] for q in self.qids}
        for (qid, docid), score in zip(self.rows, scores.tolist(), strict=True):
            run[qid].append((docid, score))
        run = {q: ranked(scored) for q, scored in run.items()}
        per_query = per_query_metrics(run, self.qrels, [self.metric], self.qids)[self.metric]
        return {f"dev_{self.metric}": fmean(per_query.values())}


def dev_query_ids(heldout: Sequence[str], n: int) -> list[str]:
    """The first `n` held-out dev queries (all when n is 0): a fixed sample for every point."""
    ids = sorted(heldout)
    return ids if n == 0 else ids[:n]

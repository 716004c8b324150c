"""Shared by the Rabtriever benchmark scripts: the default run's student and its evaluation."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from components.config import Params
from components.data.beir import BeirDataset, load_beir
from components.data.sampling import sample_query_ids
from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.layout import Layout
from components.models.late_interaction import TokenStates
from components.models.rabtriever import Predictor, QueryEncoding, Rabtriever
from components.runs import Run, read_trec_run
from components.training.jepa_trainer import JepaTrainingData, JepaTrainParams
from components.training.teacher_data import document_text
from flows.distill_jepa import collected_documents, teacher_training_data, train_params


@dataclass
class StudentBench:
    """The pipeline's teacher LLM and Rabtriever document index, plus what rerank@K reads:
    the evaluation queries (encoded alone), their qrels and BM25's candidates."""

    params: Params
    layout: Layout
    retriever: Rabtriever
    dataset: BeirDataset
    queries: dict[str, str]
    texts: dict[str, str]  # doc id -> the text the teacher reads
    qids: list[str]
    qrels: dict[str, dict[str, int]]
    bm25: Run
    query_encodings: list[QueryEncoding]

    @classmethod
    def load(cls, params: Params) -> StudentBench:
        layout = Layout(params.data.name)
        dataset = load_beir(params.data.dataset_dir())
        queries = dataset.queries_dict()
        # The stage's trained student: its predictor (IDF table included) and document index.
        retriever = Rabtriever.load(layout.root / "rabtriever", model_path=layout.teacher_model,
                                    bf16=params.teacher.bf16)  # fmt: skip
        split = params.data.test_split
        qrels = dataset.qrels_dict(split)
        qids = sample_query_ids(qrels, params.data.eval_queries, params.seed)
        return cls(
            params=params, layout=layout, retriever=retriever, dataset=dataset, queries=queries,
            texts={d: document_text(doc) for d, doc in dataset.corpus_dict().items()},
            qids=qids, qrels=qrels,
            bm25=read_trec_run(layout.run_dir("bm25") / f"{split}.trec")[0],
            query_encodings=[retriever.encode_query(queries[q]) for q in qids],
        )  # fmt: skip

    @property
    def depth(self) -> int:
        """K of rerank@K: the depth `BM25 → teacher` reranks."""
        return self.params.rank_lists.depth

    def stage_training_data(self) -> JepaTrainingData:
        """The `distill_jepa` stage's training data (its cached teacher states)."""
        return self.stage_training_pools()[0]

    def stage_training_pools(self) -> tuple[JepaTrainingData, TokenStates | None]:
        """The stage's training data and its pool documents' token states (maxsim)."""
        data, tokens, _ = teacher_training_data(
            self.retriever, self.layout.rank_lists_dir, self.params.data.train_split,
            self.queries, self.texts, self.params.jepa.encode_batch_size,
            collected_documents(self.layout, self.retriever))  # fmt: skip
        return data, tokens

    def train_params(self) -> JepaTrainParams:
        """The stage's predictor training knobs (`jepa` section, seed)."""
        return train_params(self.params.jepa, self.params.seed)

    def fresh_predictor(self) -> Predictor:
        """An untrained predictor as the stage builds it (same seed, same shape)."""
        cfg = self.params.jepa
        torch.manual_seed(self.params.seed)
        trained = self.retriever.predictor
        predictor = Predictor(
            self.retriever.model.config.hidden_size,
            width=cfg.predictor_width,
            depth=cfg.predictor_depth,
            form=cfg.predictor_form,
            layers=cfg.maxsim_layers,
            vocab_size=trained.vocab_size,
        )
        if predictor.uses_tokens:  # the stage's IDF table (fitted on the indexed corpus)
            predictor.idf.copy_(trained.idf)
        return predictor

    def rerank_ndcg(self, predictor: Predictor) -> float:
        """Mean nDCG@10 (pytrec_eval) of `predictor` reordering BM25's top-K per query, as in
        the stage's `Rabtriever (rerank@K)` row."""
        retriever = self.retriever
        retriever.predictor = predictor.eval()
        row = {d: i for i, d in enumerate(retriever.doc_ids)}
        run = {}
        for qid, query in zip(self.qids, self.query_encodings, strict=True):
            cands = [d for d, _ in self.bm25.get(qid, [])[: self.depth] if d in row]
            scores = retriever.score(query, [row[d] for d in cands])
            run[qid] = list(zip(cands, scores.tolist(), strict=True))
        metrics = per_query_metrics(run, self.qrels, ["ndcg_cut_10"], self.qids)
        return mean_metrics(metrics)["ndcg_cut_10"]


@dataclass
class RerankSplit:
    """Queries whose BM25 top-K a study reranks: candidates per query and their qrels."""

    qids: list[str]
    cands: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]


class CandidateStates:
    """Pooled vectors and token states of candidate documents: from the stage's index, or
    encoded here once for the documents outside it."""

    def __init__(self, bench: StudentBench, doc_ids: set[str]):
        retriever = bench.retriever
        self.retriever = retriever
        self.index_rows = {d: i for i, d in enumerate(retriever.doc_ids)}
        self.missing = sorted(set(doc_ids) - set(self.index_rows))
        self.extra_rows = {d: i for i, d in enumerate(self.missing)}
        self.embs, self.tokens = retriever.encode_corpus([bench.texts[d] for d in self.missing])

    def get(self, docs: list[str]) -> tuple[torch.Tensor, TokenStates]:
        """(pooled [n, H], token states) of these documents, in order."""
        embs, tokens = [], []
        for d in docs:
            if d in self.index_rows:
                i = self.index_rows[d]
                embs.append(self.retriever.doc_embeddings[i])
                tokens.append(self.retriever.doc_tokens.select([i]))
            else:
                embs.append(self.embs[self.extra_rows[d]])
                tokens.append(self.tokens.select([self.extra_rows[d]]))
        return torch.stack(embs), TokenStates.concat(tokens)


def stage_features(
    bench: StudentBench, states: CandidateStates, split: RerankSplit
) -> dict[str, tuple[QueryEncoding, torch.Tensor]]:
    """qid -> (the query as the stage encodes it, the stage's features [K, k] of its
    candidates): what the maxsim predictor reads when it reranks `split`."""
    retriever, out = bench.retriever, {}
    for q in split.qids:
        encoded = retriever.encode_query(bench.queries[q])
        embs, tokens = states.get(split.cands[q])
        out[q] = (encoded, retriever.features(encoded.tokens, encoded.pooled, embs, tokens))
    return out


def eval_split(bench: StudentBench) -> RerankSplit:
    """The stage's evaluation queries and BM25 top-K, as `Rabtriever (rerank@K)` reranks them."""
    cands = {q: [d for d, _ in bench.bm25.get(q, [])[: bench.depth]] for q in bench.qids}
    return RerankSplit(bench.qids, cands, bench.qrels)


def dev_split(bench: StudentBench, data: JepaTrainingData, n: int) -> RerankSplit:
    """`n` training queries the distillation did not use (seeded sample) with their BM25 top-K
    from the train run: where choices can be made without looking at test."""
    params = bench.params
    train_run = read_trec_run(bench.layout.run_dir("bm25") / f"{params.data.train_split}.trec")[0]
    qrels = bench.dataset.qrels_dict(params.data.train_split)
    used = set(data.query_ids or [])
    pool = sorted(q for q in qrels if q not in used and q in train_run)
    qids = random.Random(params.seed).sample(pool, min(n, len(pool)))
    return RerankSplit(qids, {q: [d for d, _ in train_run[q][: bench.depth]] for q in qids}, qrels)


def split_ndcg(split: RerankSplit, scores: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-query nDCG@10 (pytrec_eval) of each query's candidates ordered by `scores[qid]`."""
    run = {q: list(zip(split.cands[q], scores[q].tolist(), strict=True)) for q in split.qids}
    return per_query_metrics(run, split.qrels, ["ndcg_cut_10"], split.qids)["ndcg_cut_10"]

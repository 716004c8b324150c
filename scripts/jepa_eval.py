"""Shared by the Rabtriever benchmark scripts: the default run's student and its evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from components.config import Params
from components.data.beir import BeirDataset, load_beir
from components.data.sampling import sample_query_ids
from components.evaluation.metrics import mean_metrics, per_query_metrics
from components.layout import Layout
from components.models.rabtriever import Predictor, QueryEncoding, Rabtriever
from components.runs import Run, read_trec_run
from components.training.jepa_trainer import JepaTrainingData
from components.training.teacher_data import document_text
from flows.distill_jepa import teacher_training_data


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
        data, _ = teacher_training_data(
            self.retriever, self.layout.rank_lists_dir, self.params.data.train_split,
            self.queries, self.texts, self.params.jepa.encode_batch_size)  # fmt: skip
        return data

    def fresh_predictor(self) -> Predictor:
        """An untrained predictor as the stage builds it (same seed, same shape)."""
        cfg = self.params.jepa
        torch.manual_seed(self.params.seed)
        trained = self.retriever.predictor
        predictor = Predictor(self.retriever.model.config.hidden_size, width=cfg.predictor_width,
                              depth=cfg.predictor_depth, form=cfg.predictor_form,
                              layers=cfg.maxsim_layers, vocab_size=trained.vocab_size)
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

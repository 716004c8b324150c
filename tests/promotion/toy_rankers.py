"""Rankers with a known quality, logged as real MLflow pyfunc models for the promotion tests.

Each implements `components.ranker.Ranker` and is served by the wrapper every system is logged
with (`components.serving.RankerModel`, logged from code), built from its model config instead
of artifacts: promotion asks them exactly as it asks the real systems.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence

import mlflow

from components.ranker import ranked
from components.registry import model_code
from components.runs import Run
from components.serving import RankerModel, ranker_signature


class FixedRankRanker:
    """Puts each query's relevant documents at a fixed rank among its candidates, so which of
    two versions is better is known in advance."""

    reads_text = False

    def __init__(self, relevant: Mapping[str, Sequence[str]], rank_of_relevant: int):
        self.relevant = {query: set(ids) for query, ids in relevant.items()}  # query text -> ids
        self.rank = rank_of_relevant

    def index(self, corpus: Mapping[str, str]) -> None:
        """Answers by id: nothing to keep."""

    def rerank(self, queries: Mapping[str, str],
               candidates: Mapping[str, Sequence[str]]) -> Run:  # fmt: skip
        run: Run = {}
        for qid, query in queries.items():
            others = [d for d in candidates[qid] if d not in self.relevant[query]]
            hits = [d for d in candidates[qid] if d in self.relevant[query]]
            order = others[: self.rank - 1] + hits + others[self.rank - 1 :]
            run[qid] = [(d, float(len(order) - i)) for i, d in enumerate(order)]
        return run

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        raise NotImplementedError("a toy reranker: it cannot search")


class TextRanker:
    """Reads the candidates' texts, as the teacher does: a text holding `marker` ranks first."""

    reads_text = True

    def __init__(self, marker: str):
        self.marker = marker
        self.texts: dict[str, str] = {}

    def index(self, corpus: Mapping[str, str]) -> None:
        self.texts = dict(corpus)

    def rerank(self, queries: Mapping[str, str],
               candidates: Mapping[str, Sequence[str]]) -> Run:  # fmt: skip
        return {qid: ranked((d, float(self.marker in self.texts[d])) for d in candidates[qid])
                for qid in queries}  # fmt: skip

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        raise NotImplementedError("a toy reranker: it cannot search")


class SearchOnlyRanker(FixedRankRanker):
    """A retriever judged by its own search (as DGR is): its relevant documents at a fixed
    rank among filler ids; asked to rerank, it refuses, so a test sees which path was taken."""

    def rerank(self, queries, candidates) -> Run:
        raise NotImplementedError("a toy retriever: judge it by search")

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        pool = {qid: sorted(self.relevant[q]) + [f"filler-{qid}-{j}" for j in range(k)]
                for qid, q in queries.items()}  # fmt: skip
        return {qid: run[:k] for qid, run in super().rerank(queries, pool).items()}


class IndexedRanker(FixedRankRanker):
    """Reranks only the documents it indexed when it was logged (as Rabtriever's rerank index
    does) and raises KeyError for any other candidate."""

    def __init__(self, relevant, rank_of_relevant: int, indexed: Sequence[str]):
        super().__init__(relevant, rank_of_relevant)
        self.indexed = set(indexed)

    def rerank(self, queries, candidates) -> Run:
        missing = [d for qid in queries for d in candidates[qid] if d not in self.indexed]
        if missing:
            raise KeyError(f"{len(missing)} candidates are not in the index, e.g. {missing[:3]}")
        return super().rerank(queries, candidates)


class ToyModel(RankerModel):
    def make_ranker(self, artifacts, settings):
        config = settings["config"]
        if settings["system"] == "fixed-rank":
            return FixedRankRanker(config["relevant"], config["rank_of_relevant"])
        if settings["system"] == "search-only":
            return SearchOnlyRanker(config["relevant"], config["rank_of_relevant"])
        if settings["system"] == "indexed":
            return IndexedRanker(config["relevant"], config["rank_of_relevant"],
                                 config["indexed"])
        return TextRanker(config["marker"])


def log_toy(name: str, system: str, config: Mapping) -> str:
    """Log and register a toy ranker (`system`: fixed-rank, search-only, indexed or text); its
    version."""
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=model_code(ToyModel, tmp),
                                       model_config={"system": system, "config": dict(config)},
                                       signature=ranker_signature(), registered_model_name=name)
    return str(info.registered_model_version)

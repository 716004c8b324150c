"""The one pyfunc format (`components.serving.answer`), with toy rankers: no model, no MLflow.
Each system's round trip through MLflow is tested in its own package (tests/<system>/)."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

from components.ranker import Ranker
from components.serving import OUTPUT_COLUMNS, SYSTEMS, answer, system_class
from tests.promotion.toy_rankers import FixedRankRanker, TextRanker


class Recorder:
    """A ranker that records what it was asked; search returns the first k of a fixed corpus."""

    reads_text = False
    corpus = ["a", "b", "c", "d"]

    def __init__(self):
        self.calls = []

    def index(self, corpus):
        self.calls.append(("index", dict(corpus)))

    def rerank(self, queries, candidates):
        self.calls.append(("rerank", dict(queries), {q: list(c) for q, c in candidates.items()}))
        return {q: [(d, -float(i)) for i, d in enumerate(candidates[q])] for q in queries}

    def search(self, queries, k):
        self.calls.append(("search", dict(queries), k))
        return {q: [(d, 1.0 / (i + 1)) for i, d in enumerate(self.corpus[:k])] for q in queries}


def test_rows_with_candidates_are_reranked_the_others_searched_in_row_order():
    ranker = Recorder()
    frame = pd.DataFrame({"qid": ["x", "y", "z"], "query": ["one", "two", "three"],
                          "candidates": [["c", "a"], None, np.array(["b"])]})
    out = answer(ranker, frame, k=2)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert ranker.calls == [("rerank", {"x": "one", "z": "three"}, {"x": ["c", "a"], "z": ["b"]}),
                            ("search", {"y": "two"}, 2)]
    assert out[["qid", "rank", "docid"]].values.tolist() == [
        ["x", 1, "c"], ["x", 2, "a"], ["y", 1, "a"], ["y", 2, "b"], ["z", 1, "b"]]
    assert out["score"].tolist() == [0.0, -1.0, 1.0, 0.5, 0.0]


def test_qids_default_to_row_numbers_and_must_be_unique():
    out = answer(Recorder(), pd.DataFrame({"query": ["p", "q"]}), k=1)
    assert out["qid"].tolist() == ["0", "1"]
    with pytest.raises(ValueError, match="unique"):
        answer(Recorder(), pd.DataFrame({"qid": ["a", "a"], "query": ["p", "q"]}), k=1)


def test_documents_reach_a_text_reader_aligned_and_are_ignored_by_the_others():
    frame = pd.DataFrame({"qid": ["x"], "query": ["q"], "candidates": [["d1", "d2"]],
                          "documents": [["plain", "marked *"]]})
    reader = TextRanker("*")
    out = answer(reader, frame, k=5)
    assert reader.texts == {"d1": "plain", "d2": "marked *"}
    assert out["docid"].tolist() == ["d2", "d1"]
    by_id = Recorder()
    answer(by_id, frame, k=5)
    assert [call[0] for call in by_id.calls] == ["rerank"]
    # Texts from an earlier request never answer a later one.
    with pytest.raises(KeyError):
        answer(reader, frame.drop(columns="documents"), k=5)


@pytest.mark.parametrize("candidates, documents", [
    (["a", "b"], ["only one text"]),  # fewer texts than candidates
    (None, ["a text"]),  # texts for a query that searches
])
def test_documents_must_align_with_candidates(candidates, documents):
    frame = pd.DataFrame({"query": ["q"], "candidates": [candidates], "documents": [documents]})
    with pytest.raises(ValueError, match="align"):
        answer(Recorder(), frame, k=1)


def test_a_toy_follows_the_protocol_and_reranks_by_its_rule():
    ranker: Ranker = FixedRankRanker({"q": ["r"]}, rank_of_relevant=2)
    run = ranker.rerank({"1": "q"}, {"1": ["a", "r", "b"]})
    assert [d for d, _ in run["1"]] == ["a", "r", "b"]


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_every_system_implements_the_ranker_interface(system):
    cls = system_class(system)
    assert isinstance(cls.reads_text, bool) and cls.ARTIFACTS
    for method in ("index", "rerank", "search"):
        params = list(inspect.signature(getattr(cls, method)).parameters)
        expected = {"index": ["self", "corpus"], "rerank": ["self", "queries", "candidates"],
                    "search": ["self", "queries", "k"]}[method]
        assert params[: len(expected)] == expected, (system, method, params)
    assert inspect.ismethod(cls.from_artifacts)  # a classmethod

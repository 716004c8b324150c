import math
import random

import pytest
import torch

from components.dgr.identifiers import IdentifierIndex
from components.dgr.retriever import (
    GenerativeRetriever,
    RetrieverConfig,
    aggregate_views,
    top_k,
)
from components.dgr.trie import build_trie, encode_identifier
from tests.dgr.conftest import WORDS

ALL_VIEWS = {"title": 1.0, "semantic_id": 1.0, "span": 1.0, "terms": 1.0, "ngram": 1.0}


@pytest.fixture(scope="module")
def retriever(tiny_model, tokenizer, trie, identifier_index):
    return GenerativeRetriever(
        tiny_model, tokenizer, trie, identifier_index, RetrieverConfig(view_weights=ALL_VIEWS)
    )


def random_queries(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    vocab = [*WORDS, "what", "is", "the", "why", "42", "Ünïcode", "?"]
    return [" ".join(rng.choices(vocab, k=rng.randint(1, 9))) for _ in range(n)]


def test_constrained_decoding_only_yields_corpus_identifiers(retriever, identifier_index):
    # A random model has no idea what an identifier is: only the trie keeps outputs valid.
    queries = random_queries(16, seed=0)
    for view in ("semantic_id", "title", "span", "ngram"):
        known = identifier_index.view_identifiers(view)
        results = retriever.generate_identifiers(queries, view, num_beams=3)
        assert len(results) == len(queries)
        for hits in results:
            assert 1 <= len(hits) <= 3
            assert all(identifier in known for identifier, _ in hits)
            scores = [s for _, s in hits]
            assert all(math.isfinite(s) and s <= 0 for s in scores)
            assert scores == sorted(scores, reverse=True)
            assert len({i for i, _ in hits}) == len(hits)


def test_beam_scores_equal_teacher_forced_identifier_logprob(retriever, tokenizer):
    queries = ["apple river", "a much longer query about the copper engine in winter"]
    for query, hits in zip(
        queries, retriever.generate_identifiers(queries, "semantic_id", 3), strict=True
    ):
        for identifier, score in hits:
            ids = encode_identifier(tokenizer, "semantic_id", identifier)
            with torch.inference_mode():
                assert retriever.identifier_logprob(query, ids).item() == pytest.approx(
                    score, abs=1e-3
                )


def test_fewer_identifiers_than_beams(tiny_model, tokenizer):
    index = IdentifierIndex({"title": {"d1": ["red fox"]}})
    retriever = GenerativeRetriever(
        tiny_model,
        tokenizer,
        build_trie(index, tokenizer),
        index,
        RetrieverConfig(view_weights={"title": 1.0}),
    )
    assert [i for i, _ in retriever.generate_identifiers(["q"], "title", 5)[0]] == ["red fox"]
    assert [d for d, _ in retriever.search({"q": "anything"}, k=5)["q"]] == ["d1"]


def test_aggregation_formula_on_a_hand_example():
    index = IdentifierIndex(
        {
            "title": {"a": ["T1"], "b": ["T1"], "c": ["T2"]},  # T1 shared by a and b
            "semantic_id": {"a": ["0-0"], "b": ["0-1"], "c": ["1"]},
        }
    )
    hits = {
        "title": [("T1", math.log(0.3)), ("T2", math.log(0.1))],
        "semantic_id": [("0-1", math.log(0.2)), ("1", math.log(0.2))],
    }
    weights = {"title": 2.0, "semantic_id": 1.0}
    # Normalised per view: title {T1: .75, T2: .25}, semantic {0-1: .5, 1: .5}.
    scores = aggregate_views(hits, index, weights, normalize=True)
    assert scores["a"] == pytest.approx(math.log(2 * 0.75))
    assert scores["b"] == pytest.approx(math.log(2 * 0.75 + 0.5))
    assert scores["c"] == pytest.approx(math.log(2 * 0.25 + 0.5))
    raw = aggregate_views(hits, index, weights, normalize=False)
    assert raw["b"] == pytest.approx(math.log(2 * 0.3 + 0.2))
    assert [d for d, _ in top_k(scores, 2)] == ["b", "a"]
    # A zero weight switches a view off.
    only_semantic = aggregate_views(hits, index, {"title": 0.0, "semantic_id": 1.0})
    assert set(only_semantic) == {"b", "c"}
    assert only_semantic["b"] == pytest.approx(math.log(0.5))


def test_search_ranks_valid_passages_and_shared_ids_reach_all(retriever, corpus, identifier_index):
    run = retriever.search({"q1": "silver rocket", "q2": "meadow"}, k=5)
    for hits in run.values():
        assert 1 <= len(hits) <= 5
        assert all(doc in corpus for doc, _ in hits)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    # Title view alone, beam as wide as the title vocabulary: the shared title gives both passages
    # one and the same score.
    titles_only = GenerativeRetriever(
        retriever.model,
        retriever.tokenizer,
        retriever.trie,
        identifier_index,
        RetrieverConfig(view_weights={"title": 1.0}),
    )
    n_titles = len(identifier_index.view_identifiers("title"))
    scores = dict(titles_only.search({"q": "apple"}, k=n_titles + 1)["q"])
    assert scores["d00"] == pytest.approx(scores["d01"])


def test_identifier_logprob_has_gradients(retriever, tokenizer):
    ids = encode_identifier(tokenizer, "title", "some title")
    value = retriever.identifier_logprob("query", ids)
    value.backward()
    assert value.item() < 0
    grad = retriever.model.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    retriever.model.zero_grad(set_to_none=True)


def test_rerank_scores_equal_beam_scores_and_normalise_over_the_candidates(
        retriever, corpus, identifier_index):  # fmt: skip
    """Title view alone: rerank's teacher-forced identifier log-probs must equal the beam
    scores of a search as wide as the title vocabulary (raw, as the beam is not quite every
    title); normalised, they are a softmax over the candidates' distinct titles. The passage
    without a title (d02) cannot be generated: -inf."""
    def titles_only(normalize: bool) -> GenerativeRetriever:
        config = RetrieverConfig(view_weights={"title": 1.0}, normalize=normalize)
        return GenerativeRetriever(retriever.model, retriever.tokenizer, retriever.trie,
                                   identifier_index, config)  # fmt: skip

    n_titles = len(identifier_index.view_identifiers("title"))
    searched = dict(titles_only(False).search({"q": "apple"}, k=n_titles + 1)["q"])
    docs = sorted(corpus)
    reranked = titles_only(False).rerank({"q": "apple", "e": "x"}, {"q": docs[::-1], "e": []})
    assert reranked["e"] == []
    assert reranked["q"] == sorted(reranked["q"], key=lambda pair: (-pair[1], pair[0]))
    raw = dict(reranked["q"])
    assert sorted(raw) == docs and raw["d02"] == -math.inf
    assert len(searched) >= len(docs) - 3  # d02 and at most two titles the beam missed
    for doc, score in searched.items():
        assert raw[doc] == pytest.approx(score, abs=1e-3)
    normalised = dict(titles_only(True).rerank({"q": "apple"}, {"q": docs})["q"])
    by_title = {identifier_index.identifiers("title", d)[0]: raw[d] for d in docs if d != "d02"}
    log_z = math.log(sum(math.exp(v) for v in by_title.values()))
    for doc in docs:
        assert normalised[doc] == pytest.approx(raw[doc] - log_z, abs=1e-5)
    with pytest.raises(KeyError, match="no identifiers"):
        titles_only(True).rerank({"q": "apple"}, {"q": ["unknown"]})


def test_index_only_accepts_the_passages_dgr_was_trained_on(retriever, corpus):
    retriever.index({doc: "any text" for doc in corpus})
    with pytest.raises(ValueError, match="1 unknown"):
        retriever.index({"new": "text", **{doc: "any text" for doc in corpus}})
    with pytest.raises(ValueError, match="lacks 1"):
        retriever.index({doc: "any text" for doc in sorted(corpus)[1:]})

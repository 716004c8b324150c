"""Training groups from qrels + a BM25 run; seeded epoch order (rank sharding: tests/training)."""

from __future__ import annotations

import pytest

from components.teacher.data import (
    build_groups,
    document_text,
    epoch_order,
    global_batches,
    toy_retrieval_data,
)


def _collection():
    corpus = {f"d{i}": {"title": f"T{i}", "text": f"text {i}"} for i in range(20)}
    queries = {"q1": "first query", "q2": "second query", "q3": "no judged docs in corpus"}
    qrels = {"q1": {"d0": 2, "d1": 1, "d2": 0}, "q2": {"d5": 1}, "q3": {"missing": 1}}
    run = {
        "q1": [(f"d{i}", 10.0 - i) for i in range(10)],  # d0, d1 relevant; d2 judged non-rel
        "q2": [("d5", 3.0), ("d6", 2.0)],  # only one hard negative available
    }
    return corpus, queries, qrels, run


def test_groups_put_the_positive_first_and_negatives_from_bm25_top_depth():
    corpus, queries, qrels, run = _collection()
    groups = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=6, seed=1)
    assert [(g.qid, g.docids[0]) for g in groups] == [("q1", "d0"), ("q1", "d1"), ("q2", "d5")]
    for group in groups[:2]:
        negatives = group.docids[1:]
        assert len(set(negatives)) == 3
        assert set(negatives) <= {"d2", "d3", "d4", "d5"}  # top 6 minus relevant d0, d1
    # q2 has one hard negative; the rest are random non-relevant corpus docs.
    assert groups[2].docids[1] == "d6"
    assert "d5" not in groups[2].docids[1:] and len(groups[2].docids) == 4
    assert groups[0].texts[0] == document_text(corpus["d0"]) == "T0. text 0"
    assert groups[0].pairs()[0] == ("T0. text 0", "first query")


def test_sampling_is_seeded_and_independent_of_other_queries():
    corpus, queries, qrels, run = _collection()
    a = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=10, seed=7)
    b = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=10, seed=7)
    assert a == b
    only_q1 = build_groups(corpus, queries, {"q1": qrels["q1"]}, run, 3, 10, seed=7)
    assert only_q1 == a[:2]
    other_seeds = {
        build_groups(corpus, queries, qrels, run, 3, 10, seed=s)[0].docids for s in range(8)
    }
    assert len(other_seeds) > 1


def test_epoch_order_is_a_seeded_permutation():
    assert sorted(epoch_order(50, epoch=0, seed=3)) == list(range(50))
    assert epoch_order(50, 0, 3) == epoch_order(50, 0, 3)
    assert epoch_order(50, 0, 3) != epoch_order(50, 1, 3)
    batches = global_batches(10, epoch=0, seed=0, global_batch=4)
    assert [len(b) for b in batches] == [4, 4]  # the partial batch is dropped


def test_toy_data_has_distractor_hard_negatives():
    corpus, queries, qrels, run = toy_retrieval_data(n_topics=4)
    groups = build_groups(corpus, queries, qrels, run, n_negatives=3, depth=4, seed=0)
    assert len(groups) == 4
    assert all(d.startswith("n") for g in groups for d in g.docids[1:])
    with pytest.raises(ValueError):
        toy_retrieval_data(n_topics=99)

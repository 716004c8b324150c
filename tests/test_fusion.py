import pytest
from ranx import Run as RanxRun
from ranx import fuse

from components.fusion import GRID, choose_weight, interpolate, read_weight, write_weight

BM25 = {"q1": [("d1", 12.0), ("d2", 9.5), ("d3", 7.0), ("d4", 3.0)],
        "q2": [("d5", 4.0), ("d6", 2.0), ("d7", 1.0)]}
TEACHER = {"q1": [("d1", -1.5), ("d2", 2.0), ("d3", 0.5)],  # the top 3 reranked
           "q2": [("d5", 0.1), ("d6", 3.2), ("d7", -2.0)]}


def _ranx(run):
    return RanxRun({q: dict(hits) for q, hits in run.items()})


@pytest.mark.parametrize("weight", [0.25, 0.5, 0.8])
def test_equals_ranx_wsum_of_min_max_scores(weight):
    top = {q: [h for h in BM25[q] if h[0] in dict(TEACHER[q])] for q in BM25}
    expected = fuse([_ranx(top), _ranx(TEACHER)], norm="min-max", method="wsum",
                    params={"weights": [weight, 1 - weight]}).to_dict()
    ours = interpolate(BM25, TEACHER, weight)
    for qid, hits in ours.items():
        assert dict(hits) == pytest.approx(expected[qid])


def test_weight_zero_is_the_reranker_and_one_is_the_first_stage_order():
    assert interpolate(BM25, TEACHER, 0.0) is TEACHER
    ranked = sorted(interpolate(BM25, TEACHER, 1.0)["q1"], key=lambda h: -h[1])
    assert [d for d, _ in ranked] == ["d1", "d2", "d3"]  # BM25's order, d4 not reranked


def test_a_document_both_rank_second_can_win_the_mix():
    first = {"q": [("a", 10.0), ("b", 9.0), ("c", 0.0)]}
    reranked = {"q": [("a", 0.0), ("b", 9.0), ("c", 10.0)]}
    ranked = sorted(interpolate(first, reranked, 0.5)["q"], key=lambda h: -h[1])
    assert [d for d, _ in ranked][0] == "b"  # 0.9 against 0.5 and 0.5


def test_ties_empty_rankings_and_bad_weights():
    tied = interpolate({"q": [("a", 1.0), ("b", 1.0)]}, {"q": [("a", 5.0), ("b", 5.0)]}, 0.3)
    assert tied == {"q": [("a", 0.0), ("b", 0.0)]}
    assert interpolate(BM25, {"q3": []}, 0.5) == {"q3": []}
    assert interpolate({}, {"q": [("a", 2.0), ("b", 1.0)]}, 0.5) == {"q": [("a", 0.5), ("b", 0.0)]}
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate(BM25, TEACHER, 1.5)


def test_auto_weight_is_the_smallest_grid_weight_with_the_best_dev_mean(tmp_path):
    # q1: BM25 ranks the relevant d1 first, the teacher d2. Mixed, d1 leads once w > 2/3.
    weight, means = choose_weight(BM25, TEACHER, {"q1": {"d1": 1}}, "ndcg_cut_10", ["q1"])
    assert weight == 0.7 and means[0.7] == pytest.approx(1.0) and means[0.6] < 1.0
    assert set(means) == set(GRID)
    write_weight(tmp_path, "auto", weight, means, "ndcg_cut_10")
    assert read_weight(tmp_path) == 0.7
    with pytest.raises(ValueError, match="held-out dev queries"):
        choose_weight(BM25, TEACHER, {}, "ndcg_cut_10", [])

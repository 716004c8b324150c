"""On-policy rounds: the teacher scores what the student ranks high and has not been scored,
within the budget; a resumed run asks the teacher nothing again; a loss weighted 0 is never
computed."""

from __future__ import annotations

import math

import pytest
import torch

from components.rabtriever.distillation_data import JepaTrainingData, TeacherPairs
from components.rabtriever.rounds import Candidates, TeacherRounds, pick_asks, rank_candidates
from components.rabtriever.training import train_predictor
from tests.helpers import section


def test_asks_go_rank_by_rank_across_queries_within_the_budget():
    # Query 0 ranks rows 2 > 0 > 1, query 1 ranks rows 4 > 3 > 5; (0, doc 12) is scored.
    candidates = Candidates(torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(10, 16))
    scores = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.8, -1.0])
    asks, unseen = pick_asks(scores, candidates, {(0, 12)}, top_m=2, budget=3)
    assert unseen == 3  # top-2 of query 0 minus the scored pair, plus query 1's top-2
    assert asks == [0, 4, 3]  # every query's best new candidate before any second one
    assert pick_asks(scores, candidates, {(0, 12)}, top_m=2, budget=1)[0] == [0]


def _subset(data: JepaTrainingData, keep: torch.Tensor) -> JepaTrainingData:
    p = data.pairs
    pairs = TeacherPairs(p.query_index[keep], p.doc_index[keep], p.hidden[keep], p.logits[keep],
                         p.logit_ids[keep], p.scores[keep])  # fmt: skip
    return JepaTrainingData(data.query_embs, data.doc_embs, pairs, data.query_ids,
                            list(data.doc_ids), data.features[keep], data.doc_tokens)  # fmt: skip


class CachedTeacher:
    """The tiny teacher's answers, from its outputs on every pool pair (`teacher_cache`)."""

    def __init__(self, data: JepaTrainingData):
        self.data, self.calls = data, 0
        pairs = zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True)
        self.row = {pair: i for i, pair in enumerate(pairs)}

    def __call__(self, query_rows: list[int], doc_rows: list[int]) -> TeacherPairs:
        self.calls += len(query_rows)
        rows = torch.tensor([self.row[p] for p in zip(query_rows, doc_rows, strict=True)])
        full = _subset(self.data, rows).pairs
        return full


def _rounds_setup(teacher_cache):
    full = teacher_cache.data
    # The first pools: each query's first two teacher-scored documents; the wide pools: all.
    seen: dict[int, int] = {}
    keep = []
    for row, q in enumerate(full.pairs.query_index.tolist()):
        if seen.get(q, 0) < 2:
            keep.append(row)
            seen[q] = seen.get(q, 0) + 1
    data = _subset(full, torch.tensor(keep))
    candidates = Candidates(full.pairs.query_index, full.pairs.doc_index, full.features)
    return data, candidates, CachedTeacher(full)


def test_rounds_score_the_students_unseen_top_m_and_train_on_them(
    make_rabtriever, teacher_cache, tmp_path
):
    data, candidates, teacher = _rounds_setup(teacher_cache)
    first_pairs = len(data.pairs.query_index)
    params = section("rabtriever", epochs=2, rounds=2, round_epochs=2, top_m=3, round_budget=5,
                     lr=3e-3, batch_size=8)  # fmt: skip
    student = make_rabtriever()
    grower = TeacherRounds(candidates, teacher, params.top_m, params.round_budget)
    before = set(zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True))
    result = train_predictor(student.predictor, student.scorer, data, params,
                             checkpoint_dir=tmp_path, seed=0, rounds=grower)  # fmt: skip

    assert [r.round for r in result.rounds] == [1, 2]
    assert all(r.asked <= params.round_budget for r in result.rounds)
    assert result.rounds[0].asked == min(params.round_budget, result.rounds[0].unseen_in_top) > 0
    asked = sum(r.asked for r in result.rounds)
    assert teacher.calls == asked and len(data.pairs.query_index) == first_pairs + asked
    pairs = list(zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)  # no pair asked twice
    assert set(pairs) - before  # the teacher scored documents outside the first pools
    # Every round trained on the grown pools: epochs of round 0, then of each round.
    assert len(result.epochs) == params.epochs + params.rounds * params.round_epochs
    assert all(math.isfinite(e.loss) for e in result.epochs)

    # Resumed from the same folder: the stored answers, no teacher call, the same student.
    data_again, _, _ = _rounds_setup(teacher_cache)
    fresh = make_rabtriever()
    silent = CachedTeacher(teacher_cache.data)
    again = train_predictor(fresh.predictor, fresh.scorer, data_again, params,
                            checkpoint_dir=tmp_path, seed=0,
                            rounds=TeacherRounds(candidates, silent, 3, 5))  # fmt: skip
    assert silent.calls == 0 and again.rounds == result.rounds
    assert torch.equal(data_again.pairs.doc_index, data.pairs.doc_index)
    for name, tensor in fresh.predictor.state_dict().items():
        torch.testing.assert_close(tensor, student.predictor.state_dict()[name])


def test_the_untrained_student_ranks_candidates_as_the_teacher_reads_the_query_alone(
    make_rabtriever, teacher_cache
):
    data, candidates, _ = _rounds_setup(teacher_cache)
    student = make_rabtriever()
    scores = rank_candidates(student.predictor, student.scorer, data, candidates)
    for q in candidates.query_index.unique():
        rows = candidates.query_index == q
        torch.testing.assert_close(scores[rows], scores[rows][:1].expand(int(rows.sum())))


@pytest.mark.parametrize("zero", ["rkl_weight", "jepa_weight"])
def test_a_loss_weighted_zero_is_not_computed(make_rabtriever, teacher_cache, zero):
    # Poison what only that loss reads: a computed term would turn the loss into NaN.
    data = teacher_cache.data
    p = data.pairs
    poisoned = TeacherPairs(
        p.query_index, p.doc_index,
        p.hidden if zero == "rkl_weight" else torch.full_like(p.hidden, float("nan")),
        p.logits if zero == "jepa_weight" else torch.full_like(p.logits, float("nan")),
        p.logit_ids, p.scores,
    )  # fmt: skip
    data = JepaTrainingData(data.query_embs, data.doc_embs, poisoned, data.query_ids,
                            data.doc_ids, data.features, data.doc_tokens)  # fmt: skip
    student = make_rabtriever()
    params = section("rabtriever", epochs=1, rounds=0, **{zero: 0.0})
    result = train_predictor(student.predictor, student.scorer, data, params, seed=0)
    assert all(math.isfinite(e.loss) for e in result.epochs)
    part = "rkl" if zero == "rkl_weight" else "jepa"
    assert all(getattr(e, part) == 0.0 for e in result.epochs)


def test_params_refuse_a_student_with_nothing_to_train_on():
    with pytest.raises(ValueError, match="both 0"):
        section("rabtriever", jepa_weight=0.0, rkl_weight=0.0)
    with pytest.raises(ValueError, match="maxsim_layers"):
        section("rabtriever", predictor_form="maxsim", maxsim_layers=[])


def test_an_empty_document_gets_zero_attention_and_finite_gradients():
    from components.rabtriever.attention import LatentAttention

    attention = LatentAttention(8, heads=2, head_dim=4)
    query = torch.randn(2, 8, requires_grad=True)
    latent = torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = attention(query, latent, mask)
    assert torch.equal(out[1], torch.zeros(8))
    out.sum().backward()
    assert torch.isfinite(query.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attention.parameters())

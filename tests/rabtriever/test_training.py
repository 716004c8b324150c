"""On-policy predictor training on the tiny teacher's own outputs: it learns the teacher's
ranking, the LLM stays bit-identical, sampling is recorded, and resuming is exact."""

from __future__ import annotations

import pytest
import torch

from components.config import RabtrieverParams
from components.llm.base_model import load_causal_lm
from components.rabtriever.jepa_loss import jepa_loss
from components.rabtriever.model import Rabtriever
from components.rabtriever.predictor import Predictor
from components.rabtriever.reverse_kl import reverse_kl
from components.rabtriever.training import (
    pairwise_agreement,
    select_on_policy,
    student_scores,
    train_predictor,
)
from tests.helpers import section

from .conftest import MAX_DOC_TOKENS


def _params(**overrides) -> RabtrieverParams:
    """params.yaml's rabtriever section with the KL form of the JEPA loss, which `_loss`
    computes."""
    return section("rabtriever", jepa_form="kl", **overrides)


PARAMS = _params(epochs=10, top_m=6, lr=3e-3, batch_size=8, weight_decay=0.0)


def _student(model, tokenizer, template, seed=0) -> Rabtriever:
    torch.manual_seed(seed)
    return Rabtriever(
        model, tokenizer, template, Predictor(64, width=128), max_doc_tokens=MAX_DOC_TOKENS
    )


def _loss(student: Rabtriever, data, params: RabtrieverParams, rows=None) -> float:
    """The training loss on the given pair rows (default: all), computed directly."""
    pairs = data.pairs
    rows = torch.arange(len(pairs.query_index)) if rows is None else rows
    ids = None if pairs.logit_ids is None else pairs.logit_ids[rows]
    with torch.no_grad():
        pred = student.predictor(
            data.query_embs[pairs.query_index[rows]], data.doc_embs[pairs.doc_index[rows]]
        )
        jepa = jepa_loss(student.scorer.normalize(pred), pairs.hidden[rows])
        rkl = reverse_kl(student.scorer.vocab_logits(pred), pairs.logits[rows], ids)
    return (jepa + params.rkl_weight * rkl).item()


def _rows(data, sampled: dict[str, list[str]]) -> torch.Tensor:
    """Pair rows of a {qid: [docid]} sampling record."""
    q_row = {q: i for i, q in enumerate(data.query_ids)}
    d_row = {d: i for i, d in enumerate(data.doc_ids)}
    wanted = {(q_row[q], d_row[d]) for q, docs in sampled.items() for d in docs}
    pairs = zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True)
    return torch.tensor([i for i, pair in enumerate(pairs) if pair in wanted])


def test_training_learns_the_teachers_ranking_and_leaves_the_llm_untouched(
    tiny_model_master, tiny_tokenizer, template, teacher_cache
):
    model = load_causal_lm(tiny_model_master)
    llm_before = {k: v.clone() for k, v in model.state_dict().items()}
    student = _student(model, tiny_tokenizer, template)
    data = teacher_cache.data
    untrained = _student(load_causal_lm(tiny_model_master), tiny_tokenizer, template)
    logged = []
    result = train_predictor(
        student.predictor, student.scorer, data, PARAMS, log_fn=lambda s, p: logged.append((s, p)),
        seed=0,
    )

    # The untrained student scores every document alike (agreement = chance); after training it
    # orders the pools much as the teacher does.
    assert result.epochs[0].agreement == pytest.approx(0.5)
    assert result.final_agreement > 0.8
    # The loss falls where training puts it: on the student's own top-m (pairs it ranks low are
    # off-policy by design and may drift).
    assert result.epochs[-1].loss < 0.5 * result.epochs[0].loss
    on_policy = _rows(data, result.epochs[-1].sampled)
    assert len(on_policy) == len(data.query_ids) * PARAMS.top_m
    assert _loss(student, data, PARAMS, on_policy) < 0.5 * _loss(untrained, data, PARAMS, on_policy)

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, llm_before[name]), f"LLM weight {name} changed"
    assert not any(p.requires_grad for p in model.parameters())

    assert [s for s, _ in logged] == list(range(1, result.steps + 1))
    assert set(logged[0][1]) == {"loss", "jepa", "rkl", "epoch", "round"}
    n_queries = len(data.query_ids)
    assert result.steps == PARAMS.epochs * -(-n_queries * PARAMS.top_m // PARAMS.batch_size)
    pools = {}
    for q, d in zip(data.pairs.query_index.tolist(), data.pairs.doc_index.tolist(), strict=True):
        pools.setdefault(data.query_ids[q], set()).add(data.doc_ids[d])
    for epoch in result.epochs:
        assert set(epoch.sampled) == set(data.query_ids)
        for qid, docs in epoch.sampled.items():
            assert len(docs) == len(set(docs)) == PARAMS.top_m and set(docs) <= pools[qid]


def test_sampled_pairs_are_the_students_own_top_m(
    teacher_model, tiny_tokenizer, template, teacher_cache
):
    student = _student(teacher_model, tiny_tokenizer, template)
    torch.manual_seed(1)
    with torch.no_grad():  # an opinionated student, so its top-m differs from any fixed order
        student.predictor.out.weight.normal_()
    data = teacher_cache.data
    scores = student_scores(student.predictor, student.scorer, data)
    params = _params(epochs=1, top_m=3, lr=1e-3, batch_size=8)
    sampled = train_predictor(student.predictor, student.scorer, data, params, seed=0)
    sampled = sampled.epochs[0].sampled
    for q, qid in enumerate(data.query_ids):
        rows = (data.pairs.query_index == q).nonzero().squeeze(1)
        top = rows[scores[rows].topk(3).indices]
        assert set(sampled[qid]) == {data.doc_ids[i] for i in data.pairs.doc_index[top].tolist()}


def test_full_vocab_teacher_logits_train_too(
    teacher_model, tiny_tokenizer, template, full_vocab_data
):
    student = _student(teacher_model, tiny_tokenizer, template)
    params = _params(epochs=2, top_m=3, lr=3e-3, batch_size=8, rkl_top_k=16)
    before = _loss(student, full_vocab_data, params)
    result = train_predictor(student.predictor, student.scorer, full_vocab_data, params, seed=0)
    assert result.steps == 2 * -(-len(full_vocab_data.query_ids) * 3 // 8)
    assert _loss(student, full_vocab_data, params) < before


def test_resumed_training_equals_uninterrupted(
    teacher_model, tiny_tokenizer, template, teacher_cache, tmp_path
):
    settings = dict(top_m=4, lr=3e-3, batch_size=8)
    params = _params(epochs=3, **settings)
    whole = _student(teacher_model, tiny_tokenizer, template)
    expected = train_predictor(whole.predictor, whole.scorer, teacher_cache.data, params, seed=0)

    broken = _student(teacher_model, tiny_tokenizer, template)
    first = _params(epochs=2, **settings)
    train_predictor(
        broken.predictor, broken.scorer, teacher_cache.data, first, checkpoint_dir=tmp_path,
        seed=0,
    )
    resumed = _student(teacher_model, tiny_tokenizer, template, seed=123)  # fresh weights
    result = train_predictor(
        resumed.predictor, resumed.scorer, teacher_cache.data, params, checkpoint_dir=tmp_path,
        seed=0,
    )
    assert result.steps == expected.steps
    assert [e.sampled for e in result.epochs] == [e.sampled for e in expected.epochs]
    assert [e.loss for e in result.epochs] == pytest.approx([e.loss for e in expected.epochs])
    for name, tensor in resumed.predictor.state_dict().items():
        torch.testing.assert_close(tensor, whole.predictor.state_dict()[name])

    changed = _params(epochs=3, **{**settings, "lr": 1e-2})
    with pytest.raises(ValueError, match="lr"):
        train_predictor(
            resumed.predictor, resumed.scorer, teacher_cache.data, changed,
            checkpoint_dir=tmp_path, seed=0,
        )


def test_an_unfrozen_llm_is_refused(tiny_model_master, tiny_tokenizer, template, teacher_cache):
    student = _student(load_causal_lm(tiny_model_master), tiny_tokenizer, template)
    student.model.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        train_predictor(student.predictor, student.scorer, teacher_cache.data, PARAMS, seed=0)


def test_on_policy_selection_and_agreement_helpers():
    groups = torch.tensor([0, 0, 0, 1, 1])
    scores = torch.tensor([0.1, 0.9, 0.5, -1.0, 2.0])
    assert select_on_policy(scores, groups, 2).tolist() == [1, 2, 3, 4]
    # All tied: a seeded random pick, not the first rows.
    picks = {
        tuple(
            select_on_policy(torch.zeros(5), groups, 1, torch.Generator().manual_seed(s)).tolist()
        )
        for s in range(20)
    }
    assert len(picks) > 1 and all(p[0] in (0, 1, 2) and p[1] in (3, 4) for p in picks)
    teacher = torch.tensor([3.0, 2.0, 1.0, 0.0, 1.0])
    # query 0: teacher order 0 > 1 > 2; student 1 > 2 > 0 -> only (1, 2) agrees: 1/3;
    # query 1: teacher 4 > 3, student 4 > 3 -> agrees. Total 2 of 4 pairs.
    assert pairwise_agreement(scores, teacher, groups) == pytest.approx(2 / 4)
    assert pairwise_agreement(torch.zeros(5), teacher, groups) == pytest.approx(0.5)


def test_cached_training_data_is_the_teachers_output(teacher_cache, toy):
    data, states = teacher_cache.data, teacher_cache.states
    assert len(data.pairs.query_index) == sum(len(pool) for pool in toy.pools.values())
    assert set(data.doc_ids) == {d for pool in toy.pools.values() for d in pool}
    torch.testing.assert_close(data.pairs.hidden, states.hidden)
    torch.testing.assert_close(data.pairs.logits, states.topk_logits)
    assert torch.equal(data.pairs.logit_ids, states.topk_ids)
    torch.testing.assert_close(data.pairs.scores, states.scores)
    assert data.query_embs.shape[0] == len(data.query_ids) and data.doc_embs.shape[0] == len(
        data.doc_ids
    )

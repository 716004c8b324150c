"""LLMReranker: scores against an independent full-logits computation, bucketing invariance,
answer-position states, reranking (the `Ranker` interface)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.llm.precision import cpu_supports_bf16
from components.teacher.reranker import LLMReranker

PAIRS = [
    ("Aspirin lowers the risk of heart attacks in adults.", "Aspirin helps the heart."),
    ("Short doc.", "q"),
    ("A much longer document " * 12, "Another claim about something else entirely."),
    ("Vitamin D and bones.", "Vitamin D strengthens bones in children and adults alike."),
    ("Mid length document about sleep and memory consolidation.", "Sleep helps memory."),
]


@pytest.fixture
def reranker(tiny_model_dir):
    return LLMReranker.from_pretrained(tiny_model_dir, task="scifact", max_doc_tokens=32)


def test_scores_equal_full_vocab_log_prob_difference(reranker):
    # Independent path: no padding, full logits at every position, full-vocab log-softmax.
    scores = reranker.score_pairs(PAIRS, batch_size=2)
    yes, no = reranker.answer_tokens.ids
    for (doc, query), score in zip(PAIRS, scores, strict=True):
        text = reranker.prompts.build_pair_prompt(doc, query)
        ids = reranker.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            log_probs = torch.log_softmax(reranker.model(ids).logits[0, -1].double(), -1)
        assert score == pytest.approx((log_probs[yes] - log_probs[no]).item(), abs=1e-4)


def test_scores_do_not_depend_on_batching_or_order(reranker):
    reference = reranker.score_pairs(PAIRS, batch_size=1)
    assert reference.shape == (len(PAIRS),) and reference.dtype == np.float32
    np.testing.assert_allclose(reranker.score_pairs(PAIRS, batch_size=3), reference, atol=1e-5)
    perm = [3, 0, 4, 2, 1]
    shuffled = reranker.score_pairs([PAIRS[i] for i in perm], batch_size=4)
    np.testing.assert_allclose(shuffled, reference[perm], atol=1e-5)


def test_pair_states_are_what_the_lm_head_consumes(reranker):
    states = reranker.forward_pair_states(PAIRS, batch_size=2, top_k=5)
    hidden_size = reranker.model.config.hidden_size
    assert states.hidden.shape == (len(PAIRS), hidden_size)
    assert states.hidden_prenorm.shape == (len(PAIRS), hidden_size)
    np.testing.assert_allclose(states.scores.numpy(), reranker.score_pairs(PAIRS), atol=1e-5)
    with torch.no_grad():
        head = reranker.model.get_output_embeddings()
        norm = reranker.model.get_decoder().norm
        logits = head(states.hidden)
        torch.testing.assert_close(norm(states.hidden_prenorm), states.hidden)
    torch.testing.assert_close(logits[:, reranker.answer_tokens.ids], states.answer_logits)
    torch.testing.assert_close(logits.topk(5).values, states.topk_logits)
    assert states.topk_ids.shape == (len(PAIRS), 5)


def test_rerank_scores_the_indexed_texts_of_each_query_and_cannot_search(reranker):
    reranker.index({f"doc{i}": doc for i, (doc, _) in enumerate(PAIRS)})
    queries = {"a": "Aspirin helps the heart.", "b": "Sleep helps memory.", "c": "q"}
    candidates = {"a": ["doc0", "doc1", "doc2"], "b": ["doc4", "doc3"], "c": []}
    run = reranker.rerank(queries, candidates, batch_size=2)
    assert run["c"] == []
    for qid in ("a", "b"):
        alone = reranker.score_pairs([(PAIRS[int(d[3:])][0], queries[qid])
                                      for d in candidates[qid]])  # fmt: skip
        expected = sorted(zip(candidates[qid], alone.tolist(), strict=True), key=lambda p: -p[1])
        assert [d for d, _ in run[qid]] == [d for d, _ in expected]
        np.testing.assert_allclose([s for _, s in run[qid]], [s for _, s in expected], atol=1e-5)
    with pytest.raises(KeyError, match="no text"):
        reranker.rerank({"a": "q"}, {"a": ["unknown"]})
    with pytest.raises(NotImplementedError, match="reranks candidates only"):
        reranker.search(queries, k=3)


@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU without native bf16")
def test_bf16_autocast_stays_close_to_fp32(tiny_model_dir):
    fp32 = LLMReranker.from_pretrained(tiny_model_dir, task="scifact").score_pairs(PAIRS)
    bf16 = LLMReranker.from_pretrained(tiny_model_dir, task="scifact", bf16=True)
    assert bf16.bf16
    scores = bf16.score_pairs(PAIRS)
    assert len(set(scores.tolist())) == len(PAIRS)  # fp32 head: no ties from bf16 rounding
    np.testing.assert_allclose(scores, fp32, atol=0.05)

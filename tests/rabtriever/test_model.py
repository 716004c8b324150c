"""Rabtriever encoding and readout against independent computations with the tiny teacher;
rerank/search; save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.llm.padding import left_pad
from components.rabtriever.encoding import encode_documents, encode_queries
from components.rabtriever.model import Rabtriever
from components.teacher.reranker import LLMReranker, answer_logits, yes_no_score

from .conftest import MAX_DOC_TOKENS, shipped_predictor

QUERIES = ["Tell me about the harbor.", "q", "A longer query about several different things."]


def _perturb(retriever: Rabtriever, seed: int = 0) -> None:
    """Leave the identity start so documents change the scores."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in retriever.predictor.parameters():
            param.add_(0.3 * torch.randn_like(param))


def _unpadded_postnorm_states(model, tokenizer, text):
    """Independent path: one unpadded row, default positions, the decoder's post-norm output."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return ids[0], model.get_decoder()(ids).last_hidden_state[0]


def test_query_embedding_is_the_teachers_prenorm_answer_state(make_rabtriever):
    retriever = make_rabtriever()
    embs = retriever.encode_queries(QUERIES, batch_size=2)
    assert embs.shape == (3, retriever.model.config.hidden_size) and embs.dtype == torch.float32
    prompts = [retriever.prompts.build_query_prompt(q) for q in QUERIES]
    ids = retriever.tokenizer(prompts, add_special_tokens=False)["input_ids"]
    input_ids, mask = left_pad(ids, retriever.tokenizer.pad_token_id)
    with torch.no_grad():
        teacher = answer_logits(
            retriever.model, input_ids, mask, retriever.answer_tokens, return_states=True
        )
    torch.testing.assert_close(embs, teacher.hidden_prenorm, atol=1e-5, rtol=1e-5)
    # Batching and order do not matter.
    one = encode_queries(
        retriever.model, retriever.tokenizer, retriever.prompts, QUERIES[::-1], batch_size=1
    )
    torch.testing.assert_close(one, embs.flip(0), atol=1e-5, rtol=1e-5)


def test_readout_is_the_teachers(make_rabtriever, teacher_cache):
    retriever = make_rabtriever()
    states = teacher_cache.states
    # The scorer's norm on the teacher's pre-norm state gives exactly its post-norm state, and
    # the two-row readout gives the teacher's answer logits and scores.
    torch.testing.assert_close(retriever.scorer.normalize(states.hidden_prenorm), states.hidden)
    with torch.no_grad():
        logits = retriever.scorer.answer_logits(states.hidden_prenorm)
        vocab = retriever.scorer.vocab_logits(states.hidden_prenorm)
    torch.testing.assert_close(logits, states.answer_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vocab[:, retriever.answer_tokens.ids], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        retriever.scorer.score(states.hidden_prenorm), states.scores, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("form", ["attention", "maxsim", "mlp"])
def test_untrained_student_scores_every_document_as_the_teacher_scores_the_query_alone(
    tiny_model_master, toy, teacher_model, tiny_tokenizer, template, form
):
    # attention: the shipped form; mlp: what `predictor=None` gives.
    predictor = shipped_predictor(teacher_model, form) if form != "mlp" else None
    retriever = Rabtriever.from_pretrained(
        tiny_model_master, predictor=predictor, max_doc_tokens=MAX_DOC_TOKENS
    )
    assert retriever.predictor.form == form
    if form != "mlp":
        retriever.fit_idf(list(toy.corpus.values()))
    retriever.index(toy.corpus)
    query = toy.queries["q0"]
    scores = [s for _, s in retriever.search({"q": query}, k=len(toy.corpus))["q"]]
    teacher = LLMReranker(teacher_model, tiny_tokenizer, template)
    prompt = teacher.prompts.build_query_prompt(query)
    ids, mask = left_pad([tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]], 0)
    with torch.no_grad():
        alone = yes_no_score(
            answer_logits(teacher_model, ids, mask, teacher.answer_tokens).answer_logits
        )
    np.testing.assert_allclose(scores, alone.item(), atol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_document_embedding_pools_postnorm_states_of_the_document_tokens(
    make_rabtriever, toy, pooling
):
    retriever = make_rabtriever(pooling=pooling)
    docs = list(toy.corpus.values())[:2] + ["x"]
    embs = retriever.encode_documents(docs, batch_size=2)
    assert embs.shape == (3, retriever.model.config.hidden_size)
    prefix_ids = retriever.tokenizer(retriever.prompts.chat_prefix, add_special_tokens=False)
    prefix_ids = prefix_ids["input_ids"]
    prefix = len(prefix_ids)
    for doc, emb in zip(docs, embs, strict=True):
        prompt = retriever.prompts.build_document_prompt(doc)
        ids, post = _unpadded_postnorm_states(retriever.model, retriever.tokenizer, prompt)
        assert ids[:prefix].tolist() == prefix_ids  # the chat prefix is a token prefix
        expected = post[prefix:].mean(0) if pooling == "mean" else post[-1]
        torch.testing.assert_close(emb, expected, atol=1e-4, rtol=1e-4)
    again = encode_documents(
        retriever.model, retriever.tokenizer, retriever.prompts, docs[::-1], 1, pooling
    )
    torch.testing.assert_close(again, embs.flip(0), atol=1e-5, rtol=1e-5)


def test_rerank_and_search_agree_with_score(make_rabtriever, toy):
    retriever = make_rabtriever()
    _perturb(retriever)
    retriever.index(toy.corpus, batch_size=4)
    query = toy.queries["q1"]
    q = retriever.encode_query(query)
    direct = retriever.score(q, None, batch_size=5)  # every indexed document, several chunks
    assert len(set(direct.tolist())) == len(toy.corpus)  # documents matter now
    best = sorted(zip(retriever.doc_ids, direct.tolist(), strict=True), key=lambda p: -p[1])
    top = retriever.search({"q1": query}, k=4, batch_size=3)["q1"]
    assert [d for d, _ in top] == [d for d, _ in best[:4]]
    np.testing.assert_allclose([s for _, s in top], [s for _, s in best[:4]], atol=1e-5)
    candidates = ["n3", "d2", "d5"]
    ranked = retriever.rerank({"q1": query}, {"q1": candidates})["q1"]
    assert sorted(d for d, _ in ranked) == sorted(candidates)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    by_id = dict(best)
    np.testing.assert_allclose([s for _, s in ranked], [by_id[d] for d, _ in ranked], atol=1e-5)
    with pytest.raises(KeyError, match="not in the index"):
        retriever.rerank({"q1": query}, {"q1": ["nope"]})
    # A batch answers each query as it would alone.
    run = retriever.search({"q1": query, "q2": toy.queries["q2"]}, k=2)
    assert [d for d, _ in run["q1"]] == [d for d, _ in top[:2]]
    assert run["q2"] == retriever.search({"x": toy.queries["q2"]}, k=2)["x"]
    both = retriever.rerank({"q1": query, "q2": toy.queries["q2"]},
                            {"q1": candidates, "q2": []})
    assert both == {"q1": ranked, "q2": []}
    # Queries encoded together (batched LLM passes) score as each does alone.
    pair = retriever.rerank({"q1": query, "q2": toy.queries["q2"]},
                            {"q1": candidates, "q2": candidates})  # fmt: skip
    alone = retriever.rerank({"q2": toy.queries["q2"]}, {"q2": candidates})["q2"]
    for got, want in ((pair["q1"], ranked), (pair["q2"], alone)):
        assert [d for d, _ in got] == [d for d, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-4)


def test_save_load_round_trip(make_rabtriever, toy, tiny_model_master, tmp_path):
    retriever = make_rabtriever(pooling="last")
    _perturb(retriever, seed=1)
    retriever.index(toy.corpus)
    query = toy.queries["q2"]
    expected = retriever.search({"q": query}, k=5)["q"]
    retriever.save(tmp_path / "rab")
    names = sorted(p.name for p in (tmp_path / "rab").iterdir())
    assert names == [
        "doc_embeddings.npy",
        "doc_ids.json",
        "doc_index.json",
        "doc_token_ids.npy",
        "doc_token_states_L2.npy",  # layer 0 is looked up from the ids, not stored
        "doc_tokens.json",
        "predictor.safetensors",
        "rabtriever.json",
    ]
    # Plain float32 rows: loadable without pickle.
    assert np.load(tmp_path / "rab" / "doc_embeddings.npy", allow_pickle=False).dtype == np.float32

    loaded = Rabtriever.load(tmp_path / "rab", model_path=tiny_model_master)
    assert loaded.pooling == "last" and loaded.max_doc_tokens == MAX_DOC_TOKENS
    assert loaded.predictor.config == retriever.predictor.config
    assert loaded.doc_ids == retriever.doc_ids
    got = loaded.search({"q": query}, k=5)["q"]
    assert [d for d, _ in got] == [d for d, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)

    # An index encoded differently (another pooling) is refused rather than silently mixed.
    retriever.save_index(tmp_path / "index")
    other = make_rabtriever(pooling="mean")
    with pytest.raises(ValueError, match="pooling"):
        other.load_index(tmp_path / "index")
    config = json.loads((tmp_path / "rab" / "rabtriever.json").read_text())
    config["answer_token_ids"] = [1, 2]
    (tmp_path / "rab" / "rabtriever.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="answer ids"):
        Rabtriever.load(tmp_path / "rab", model=retriever.model, tokenizer=retriever.tokenizer)

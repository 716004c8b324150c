"""The maxsim predictor: late-interaction features against hand computations, the token-state
index, and a maxsim student end to end on the tiny teacher (encode, rank, save, load, train)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from components.rabtriever.distillation_data import build_training_data
from components.rabtriever.encoding import (
    encode_document_tokens,
    encode_queries,
    encode_query_tokens,
)
from components.rabtriever.late_interaction import TokenStates, fit_idf, maxsim_features
from components.rabtriever.model import Rabtriever
from components.rabtriever.predictor import Predictor
from components.rabtriever.training import train_predictor
from tests.helpers import section

from .conftest import MAX_DOC_TOKENS

LAYERS = [0, 2]  # the tiny teacher's embeddings and its last (second) decoder layer


def _embedding(vectors: list[list[float]]) -> nn.Embedding:
    embedding = nn.Embedding(len(vectors), len(vectors[0]))
    embedding.weight.data = torch.tensor(vectors, dtype=torch.float32)
    return embedding


def test_maxsim_features_hand_computed():
    # Token embeddings (layer 0): tokens 0..3 in the plane.
    embedding = _embedding([[1, 0], [0, 1], [1, 1], [-1, 0]])
    # Layer 1 states are given directly (stored states are unit-normalised by from_rows).
    query = TokenStates.from_rows([[0, 1]], {1: [torch.tensor([[1.0, 0.0], [0.0, 2.0]])]})
    docs = TokenStates.from_rows(
        [[2], [3, 0, 1]],
        {1: [torch.tensor([[3.0, 4.0]]), torch.tensor([[-1.0, 0.0], [0.0, -1.0], [1.0, 1.0]])]},
    )
    idf = torch.tensor([1.0, 3.0, 0.0, 0.0])  # token 1 weighs three times token 0
    q_pooled, d_pooled = torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0], [0.0, -2.0]])
    got = maxsim_features(query, docs, q_pooled, d_pooled, idf, [0, 1], embedding)

    s = 1 / math.sqrt(2)
    # Layer 0: doc 1 holds token 2 = (1,1)/sqrt2, so both query tokens match it at 1/sqrt2.
    # Doc 2 holds tokens 3, 0, 1: exact matches for both query tokens.
    # Layer 1: query (1,0), (0,1); doc 1 (0.6, 0.8): 0.6 and 0.8. Doc 2: (-1,0), (0,-1),
    # (1,1)/sqrt2: best 1/sqrt2 for both.
    expected = torch.tensor([
        [s, s, (0.6 + 0.8) / 2, (1 * 0.6 + 3 * 0.8) / 4, s],
        [1.0, 1.0, s, s, 0.0],
    ])  # fmt: skip
    torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)  # states are stored in fp16


def test_a_corpus_scan_gives_the_features_of_a_lookup():
    # More document tokens than vocabulary entries switches layer 0 to the vocabulary product.
    torch.manual_seed(0)
    embedding = nn.Embedding(7, 5)
    rows = [torch.randint(0, 7, (n,)).tolist() for n in (3, 1, 4, 2, 5)]
    docs = TokenStates.from_rows(rows, {})
    query = TokenStates.from_rows([[1, 4, 4]], {})
    idf = fit_idf(rows, 7)
    pooled = torch.randn(5, 5)
    scan = maxsim_features(query, docs, pooled[0], pooled, idf, [0], embedding)
    one_by_one = torch.cat([
        maxsim_features(query, docs.select([i]), pooled[0], pooled[i : i + 1], idf, [0], embedding)
        for i in range(5)
    ])  # fmt: skip
    torch.testing.assert_close(scan, one_by_one)
    assert docs.token_ids.numel() > 7 and docs.select([1]).token_ids.numel() < 7


def test_an_empty_query_matches_nothing():
    docs = TokenStates.from_rows([[1, 2]], {})
    got = maxsim_features(
        TokenStates.from_rows([[]], {}), docs, torch.ones(3), torch.ones(1, 3),
        torch.ones(4), [0], nn.Embedding(4, 3),
    )  # fmt: skip
    assert torch.equal(got, torch.zeros(1, 3))


def test_idf_hand_computed():
    idf = fit_idf([[0, 1, 1], [1, 2], [-1, 1]], vocab_size=4)  # -1 is padding
    n = 3
    expected = [math.log((n + 1) / (df + 0.5)) for df in (1, 3, 1, 0)]
    torch.testing.assert_close(idf, torch.tensor(expected))


def test_token_states_select_concat_save_load(tmp_path):
    a = TokenStates.from_rows([[5, 6], [7]], {3: [torch.ones(2, 4), torch.ones(1, 4)]})
    b = TokenStates.from_rows([[1, 2, 3]], {3: [torch.randn(3, 4)]})
    both = TokenStates.concat([a, b])
    assert both.token_ids.tolist() == [[5, 6, -1], [7, -1, -1], [1, 2, 3]]
    assert both.states[3].dtype == torch.float16 and both.states[3].shape == (3, 3, 4)
    torch.testing.assert_close(both.states[3][0, 0].float().norm(), torch.tensor(1.0), atol=1e-3,
                               rtol=0)  # fmt: skip
    assert torch.equal(both.states[3][1, 1:], torch.zeros(2, 4, dtype=torch.float16))
    assert torch.equal(both.select([2, 0]).token_ids, both.token_ids[[2, 0]])
    short = both.select([1, 0], trim=True)  # the padding no selected text uses is dropped
    assert short.token_ids.tolist() == [[7, -1], [5, 6]] and short.states[3].shape == (2, 2, 4)
    both.save(tmp_path)
    assert TokenStates.exists(tmp_path)
    # Stored packed: the 6 real tokens' states, no padding rows.
    assert np.load(tmp_path / "doc_token_states_L3.npy").shape == (6, 4)
    loaded = TokenStates.load(tmp_path)
    assert torch.equal(loaded.token_ids, both.token_ids)
    assert torch.equal(loaded.states[3], both.states[3])
    assert np.load(tmp_path / "doc_token_ids.npy", allow_pickle=False).dtype == np.int32
    # An index written in the earlier padded layout still loads.
    np.save(tmp_path / "doc_token_states_L3.npy", both.states[3].numpy())
    assert torch.equal(TokenStates.load(tmp_path).states[3], both.states[3])


def test_maxsim_predictor_starts_as_the_query_state_and_reads_standardised_features():
    predictor = Predictor(8, form="maxsim", layers=[0, 4], vocab_size=11)
    assert predictor.config["layers"] == [0, 4] and predictor.num_parameters() == 5 * 8 + 8
    assert Predictor.from_config(predictor.config).config == predictor.config
    q, features = torch.randn(3, 8) * 20, torch.randn(3, 5)
    torch.testing.assert_close(predictor(q, torch.zeros(3, 8), features), q)
    with pytest.raises(ValueError, match="features"):
        predictor(q, torch.zeros(3, 8))
    predictor.fit_feature_scaling(torch.tensor([[1.0, 2, 3, 4, 5], [3.0, 2, 5, 4, 9]]))
    torch.testing.assert_close(predictor.feature_mean, torch.tensor([2.0, 2, 4, 4, 7]))
    assert predictor.feature_std[1] > 0  # a constant feature is not divided by zero
    with torch.no_grad():
        predictor.features_out.weight.fill_(1.0)
    rms = q.pow(2).mean(-1, keepdim=True).sqrt()
    z = (features - predictor.feature_mean) / predictor.feature_std
    torch.testing.assert_close(
        predictor(q, torch.zeros(3, 8), features), q + rms * z.sum(-1, keepdim=True)
    )
    with pytest.raises(ValueError, match="layers"):
        Predictor(8, form="maxsim")


@pytest.fixture
def maxsim_student(make_rabtriever, teacher_model, toy) -> Rabtriever:
    vocab = teacher_model.get_input_embeddings().num_embeddings
    retriever = make_rabtriever(predictor=Predictor(64, form="maxsim", layers=LAYERS,
                                                    vocab_size=vocab))  # fmt: skip
    retriever.fit_idf(list(toy.corpus.values()))
    return retriever


def test_maxsim_student_encodes_ranks_saves_and_loads(maxsim_student, toy, tiny_model_master,
                                                      tmp_path):  # fmt: skip
    retriever = maxsim_student
    assert retriever.token_layers == LAYERS
    with torch.no_grad():
        retriever.predictor.features_out.weight.normal_()
    retriever.index(toy.corpus, batch_size=4)
    assert retriever.doc_tokens is not None and set(retriever.doc_tokens.states) == {2}

    # The answer state and the pooled vector of the query's own segment ("{query_label}:
    # {query}") come from one pass over the query prompt after the cached chat prefix; the token
    # states from a pass over the document prompt cut at layer 2. Each equals its full encoder.
    query = toy.queries["q1"]
    encoded = retriever.encode_query(query)
    assert retriever._prefix_cache is not None
    model, tokenizer, prompts = retriever.model, retriever.tokenizer, retriever.prompts
    torch.testing.assert_close(encoded.state, encode_queries(model, tokenizer, prompts, [query])[0],
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    prompt = tokenizer(prompts.build_query_prompt(query), return_tensors="pt",
                       add_special_tokens=False)["input_ids"]  # fmt: skip
    first = len(tokenizer(prompts.chat_prefix, add_special_tokens=False)["input_ids"])
    last = len(tokenizer(prompts.build_query_head(query), add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        post = model.get_decoder()(input_ids=prompt).last_hidden_state[0]
    torch.testing.assert_close(encoded.pooled, post[first:last].mean(0), atol=1e-4, rtol=1e-4)
    _, doc_tokens = encode_document_tokens(model, tokenizer, prompts, [query], [2])
    assert torch.equal(encoded.tokens.token_ids, doc_tokens.token_ids)
    torch.testing.assert_close(encoded.tokens.states[2], doc_tokens.states[2], atol=2e-3, rtol=0)
    # Batched (padding around it) equals one at a time.
    state, pooled, tokens = encode_query_tokens(model, tokenizer, prompts,
                                                [query, toy.queries["q2"], "x"], [2])  # fmt: skip
    torch.testing.assert_close(encoded.state, state[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(encoded.pooled, pooled[0], atol=1e-4, rtol=1e-4)
    width = encoded.tokens.token_ids.shape[1]
    assert torch.equal(tokens.token_ids[:1, :width], encoded.tokens.token_ids)
    torch.testing.assert_close(tokens.states[2][:1, :width], encoded.tokens.states[2],
                               atol=2e-3, rtol=0)  # fmt: skip

    scores = retriever.score(encoded, None, batch_size=5)
    assert len(set(scores.tolist())) == len(toy.corpus)  # documents matter
    best = sorted(zip(retriever.doc_ids, scores.tolist(), strict=True), key=lambda p: -p[1])
    assert [d for d, _ in retriever.search({"q": query}, k=4)["q"]] == [d for d, _ in best[:4]]
    ranked = retriever.rerank({"q": query}, {"q": ["n3", "d2", "d5"]})["q"]
    np.testing.assert_allclose([s for _, s in ranked], [dict(best)[d] for d, _ in ranked],
                               atol=1e-5)  # fmt: skip

    retriever.save(tmp_path / "rab")
    names = {p.name for p in (tmp_path / "rab").iterdir()}
    assert {"doc_token_ids.npy", "doc_token_states_L2.npy", "doc_tokens.json"} <= names
    loaded = Rabtriever.load(tmp_path / "rab", model_path=tiny_model_master)
    assert torch.equal(loaded.predictor.idf, retriever.predictor.idf)
    got = loaded.search({"q": query}, k=4)["q"]
    assert [d for d, _ in got] == [d for d, _ in best[:4]]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in best[:4]], atol=1e-5)

    # An index without the token states this predictor reads is refused.
    with pytest.raises(ValueError, match="token states"):
        retriever.set_index(retriever.doc_ids, retriever.doc_embeddings)
    too_deep = Predictor(64, form="maxsim", layers=[0, 3], vocab_size=10)
    with pytest.raises(ValueError, match="exceed"):
        Rabtriever(retriever.model, retriever.tokenizer, retriever.template, too_deep)


def test_a_longer_maxsim_cut_reads_more_of_each_document(make_rabtriever, maxsim_student, toy,
                                                        tiny_model_master, tmp_path):  # fmt: skip
    # The pooled vector keeps the teacher's cut; the compared token states read further.
    long_text = " ".join(toy.corpus.values())
    longer = make_rabtriever(predictor=maxsim_student.predictor,
                             maxsim_doc_tokens=2 * MAX_DOC_TOKENS)  # fmt: skip
    assert longer.separate_token_pass and not maxsim_student.separate_token_pass
    texts = [long_text, toy.corpus["d1"]]
    pooled, tokens = longer.encode_corpus(texts)
    cut_pooled, cut_tokens = maxsim_student.encode_corpus(texts)
    torch.testing.assert_close(pooled, cut_pooled, atol=1e-5, rtol=1e-4)
    lengths, cut_lengths = tokens.mask.sum(1).tolist(), cut_tokens.mask.sum(1).tolist()
    assert lengths[0] > cut_lengths[0] + MAX_DOC_TOKENS // 2  # the long text is read further
    assert lengths[1] == cut_lengths[1]  # a short one is whole either way
    assert [len(ids) for ids in longer.document_token_ids(texts)] == lengths  # IDF sees them
    # Causal attention: the tokens both cuts share have the same states (the cut's last token
    # may be re-tokenised, so compare the ones before it).
    shared = cut_lengths[0] - 2
    torch.testing.assert_close(tokens.states[2][0, :shared], cut_tokens.states[2][0, :shared],
                               atol=2e-3, rtol=0)  # fmt: skip

    longer.index({"long": long_text, **toy.corpus})
    query = toy.queries["q1"]
    longer.save(tmp_path / "rab")
    loaded = Rabtriever.load(tmp_path / "rab", model_path=tiny_model_master)
    assert loaded.maxsim_doc_tokens == 2 * MAX_DOC_TOKENS and loaded.separate_token_pass
    assert loaded.search({"q": query}, k=3) == longer.search({"q": query}, k=3)
    # An index read at another cut is refused, not silently mixed.
    with pytest.raises(ValueError, match="maxsim_doc_tokens"):
        maxsim_student.load_index(tmp_path / "rab")


def test_maxsim_training_learns_the_teachers_ranking(maxsim_student, toy):
    data = build_training_data(maxsim_student, toy.queries, toy.corpus, toy.pools, top_k=16)
    assert data.features is not None and data.features.shape == (len(data.pairs.query_index), 5)
    params = section("rabtriever", epochs=10, top_m=6, lr=3e-2, batch_size=8, weight_decay=0.0,
                     jepa_form="smooth_l1", rkl_weight=0.0)  # fmt: skip
    result = train_predictor(maxsim_student.predictor, maxsim_student.scorer, data, params,
                             seed=0)
    assert result.epochs[0].agreement == pytest.approx(0.5)  # untrained: documents do not count
    assert result.final_agreement > 0.6
    assert result.epochs[-1].loss < result.epochs[0].loss
    # The scaling statistics are the training pairs'.
    torch.testing.assert_close(maxsim_student.predictor.feature_mean, data.features.mean(0))
    assert MAX_DOC_TOKENS == maxsim_student.max_doc_tokens

"""The bi-encoder baseline: loss, pooling, training on a toy collection, persistence."""

import math

import numpy as np
import pytest
import torch

from components.biencoder.loss import contrastive_loss
from components.biencoder.model import BiEncoder
from components.biencoder.training import train_biencoder
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.teacher.data import build_groups, toy_retrieval_data
from tests.helpers import section


def test_contrastive_loss_matches_hand_computation():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    documents = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss = contrastive_loss(queries, documents, torch.tensor([0, 1]), temperature=0.5)
    # query 0 sims (1, 0, 0.6) -> /0.5 = (2, 0, 1.2); query 1 sims (0, 1, 0.8) -> (0, 2, 1.6)
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(1.2)))
                - math.log(math.exp(2) / (1 + math.exp(2) + math.exp(1.6)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="positives"):
        contrastive_loss(queries, documents, torch.tensor([0]))


@pytest.fixture
def encoder(tiny_model_dir):
    return BiEncoder(load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir),
                     max_doc_tokens=24)


def test_embeddings_are_normalised_and_independent_of_batch_padding(encoder):
    texts = ["a short one", "a much longer passage about the violin and its old maker"]
    together = encoder.encode(texts, "passage", batch_size=2)
    alone = np.stack([encoder.encode([t], "passage")[0] for t in texts])
    assert together.shape == (2, encoder.model.config.hidden_size)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-4)
    rows = encoder.token_rows(["word " * 100], "passage")
    assert len(rows[0]) == 24 + 1 and rows[0][-1] == encoder.tokenizer.eos_token_id


def _toy_ndcg_proxy(encoder, queries, qrels, corpus):
    """Share of queries whose relevant document ranks first among all documents."""
    encoder.index({d: doc["text"] for d, doc in corpus.items()})
    run = encoder.search(queries, k=len(corpus))
    return np.mean([run[q][0][0] in qrels[q] for q in queries])


def test_training_lowers_the_loss_and_improves_ranking(encoder, tmp_path):
    corpus, queries, qrels, run = toy_retrieval_data(n_topics=8)
    groups = build_groups(corpus, queries, qrels, run, n_negatives=1, depth=8)
    before = _toy_ndcg_proxy(encoder, queries, qrels, corpus)
    frozen = encoder.model.get_input_embeddings().weight.detach().clone()
    params = section("biencoder", train_mode="full", lr=3e-3, batch_size=4, steps=40,
                     temperature=0.1, checkpoint_every=100, warmup_ratio=0.0)
    result = train_biencoder(encoder, groups, params, tmp_path / "ckpt", seed=0)
    assert result.completed and np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    after = _toy_ndcg_proxy(encoder, queries, qrels, corpus)
    assert after > before and after >= 0.75
    assert not torch.equal(frozen, encoder.model.get_input_embeddings().weight)


def test_top_layers_mode_trains_only_the_top_layers(encoder, tmp_path):
    corpus, queries, qrels, run = toy_retrieval_data(n_topics=4)
    groups = build_groups(corpus, queries, qrels, run, n_negatives=1, depth=8)
    bottom = [p.detach().clone() for p in encoder.model.get_decoder().layers[0].parameters()]
    params = section("biencoder", train_mode="top_layers", top_layers=1, lr=1e-2, batch_size=4,
                     steps=2, checkpoint_every=100)
    train_biencoder(encoder, groups, params, tmp_path / "ckpt", seed=0)
    after = list(encoder.model.get_decoder().layers[0].parameters())
    assert all(torch.equal(a, b) for a, b in zip(bottom, after, strict=True))
    top = encoder.model.get_decoder().layers[-1]
    assert all(p.requires_grad for p in top.parameters())


def test_save_and_load_round_trip_with_index(encoder, tmp_path):
    corpus = {"a": "violin strings", "b": "rocket fuel", "c": "winter snow"}
    encoder.index(corpus)
    path = encoder.save(tmp_path / "biencoder")
    loaded = BiEncoder.from_artifacts({"biencoder": str(path)}, {})
    assert loaded.max_doc_tokens == 24
    got, want = loaded.search({"q": "snow"}, k=3)["q"], encoder.search({"q": "snow"}, k=3)["q"]
    assert [d for d, _ in got] == [d for d, _ in want]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    # Reranking scores each candidate as the search does, best first.
    reranked = loaded.rerank({"q": "snow", "r": "fuel"}, {"q": ["a", "b", "c"], "r": []})
    assert [d for d, _ in reranked["q"]] == [d for d, _ in got] and reranked["r"] == []
    np.testing.assert_allclose([s for _, s in reranked["q"]], [s for _, s in got], atol=1e-4)
    with pytest.raises(KeyError, match="not in the index"):
        loaded.rerank({"q": "x"}, {"q": ["zzz"]})

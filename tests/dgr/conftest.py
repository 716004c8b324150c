"""DGR test fixtures: the real SmolLM2 tokenizer, a tiny random 2-layer Llama built on it once per
session (copied per test that trains), and a small corpus with identifiers in every view.

The tokenizer and tiny-model fixtures come from tests/conftest.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# Two cores are shared with other workers; more threads only add contention.
torch.set_num_threads(2)

WORDS = (
    "apple river stone cloud engine violin garden winter copper forest signal harbor "
    "lantern meadow planet rocket silver thunder valley wizard"
).split()


@pytest.fixture(scope="session")
def tiny_model(tiny_model_master):
    """Read-only model for inference tests (never trained)."""
    from components.llm.base_model import load_causal_lm

    return load_causal_lm(tiny_model_master)


@pytest.fixture(scope="session")
def corpus() -> dict[str, dict[str, str]]:
    """24 passages; d00 and d01 share a title (a shared identifier), d02 has none."""
    rng = np.random.default_rng(0)
    docs = {}
    for i in range(24):
        title = " ".join(rng.choice(WORDS, 2, replace=False))
        text = " ".join(rng.choice(WORDS, 14))
        docs[f"d{i:02d}"] = {"title": title, "text": text}
    docs["d01"]["title"] = docs["d00"]["title"]
    docs["d02"]["title"] = ""
    return docs


@pytest.fixture(scope="session")
def embeddings(corpus) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(len(corpus), 8)).astype(np.float32)


@pytest.fixture(scope="session")
def identifier_index(corpus, embeddings):
    from components.dgr.identifiers import IdentifierParams, build_identifier_index

    params = IdentifierParams(
        views=("title", "semantic_id", "span", "terms", "ngram"),
        span_words=4,
        ngram_words=2,
        terms_count=3,
        semantic_branching=3,
        semantic_leaf_size=4,
    )
    return build_identifier_index(corpus, params, embeddings=embeddings)


@pytest.fixture(scope="session")
def trie(identifier_index, tokenizer):
    from components.dgr.trie import build_trie

    return build_trie(identifier_index, tokenizer)

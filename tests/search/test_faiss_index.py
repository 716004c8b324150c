"""FAISS index types: IVF and HNSW return flat's exact ranking when told to search everything,
approximate it otherwise, and keep their search settings through save/load."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from components.search import faiss_index
from components.search.faiss_index import IndexSpec


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rows = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def top(index, queries, k=10):
    return index.search(queries, k)[1]


@pytest.mark.parametrize("spec", [IndexSpec("ivf", ivf_lists=20, nprobe=20),
                                  IndexSpec("hnsw", hnsw_m=16, ef_search=2000)])
def test_searching_everything_gives_the_exact_ranking(vectors, spec):
    queries = vectors[:50] + 0.1
    exact = top(faiss_index.build(vectors, IndexSpec("flat")), queries)
    assert (top(faiss_index.build(vectors, spec), queries) == exact).all()


def test_fewer_cells_approximate_and_the_setting_survives_a_file_round_trip(vectors, tmp_path):
    queries = vectors[:200] + 0.3
    exact = top(faiss_index.build(vectors, IndexSpec("flat")), queries)
    spec = IndexSpec("ivf", ivf_lists=40, nprobe=2)
    approx = faiss_index.build(vectors, spec)
    overlap = np.mean([len(set(a) & set(e)) / 10 
                       for a, e in zip(top(approx, queries), exact, strict=True)])
    assert 0.3 < overlap < 1.0
    faiss.write_index(approx, str(tmp_path / "i.faiss"))
    loaded = faiss_index.configure(faiss.read_index(str(tmp_path / "i.faiss")), spec)
    assert faiss.extract_index_ivf(loaded).nprobe == 2
    assert (top(loaded, queries) == top(approx, queries)).all()


def test_cell_count_follows_the_corpus_and_keeps_enough_documents_a_cell():
    assert faiss_index.ivf_lists(IndexSpec("ivf"), 100_000) == 1265  # 4·sqrt(N)
    assert faiss_index.ivf_lists(IndexSpec("ivf"), 5_183) == 132  # SciFact: 39+ per cell
    assert faiss_index.ivf_lists(IndexSpec("ivf", ivf_lists=4096), 1_000) == 25
    with pytest.raises(ValueError, match="one of"):
        IndexSpec("ivfpq")

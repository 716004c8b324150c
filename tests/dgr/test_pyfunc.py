"""DGR's MLflow pyfunc round trip through the one wrapper (`components.serving`)."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from components.dgr.retriever import GenerativeRetriever, RetrieverConfig
from components.serving import OUTPUT_COLUMNS, log_ranker


@pytest.fixture
def tmp_tracking(tmp_path):
    """A private sqlite store; the process-global URI (and its env var) is put back afterwards."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def test_pyfunc_round_trip(
    tiny_model_master, tiny_model, tokenizer, trie, identifier_index, tmp_path, tmp_tracking
):
    experiment = mlflow.create_experiment("dgr-test", artifact_location=str(tmp_path / "mlruns"))
    # One view keeps this test quick; view fusion is covered in test_retriever.py.
    config = RetrieverConfig(view_weights={"semantic_id": 1.0}, batch_size=4)
    trie.save(tmp_path / "trie.json")
    identifier_index.save(tmp_path / "identifiers.json")
    with mlflow.start_run(experiment_id=experiment):
        info = log_ranker("dgr", {"model": tiny_model_master, "trie": tmp_path / "trie.json",
                                  "identifiers": tmp_path / "identifiers.json"},
                          config.to_dict(), name="dgr", k=3)

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    queries = pd.DataFrame({"qid": ["a", "b"], "query": ["silver rocket", "old violin"]})
    out = loaded.predict(queries)
    assert list(out.columns) == OUTPUT_COLUMNS
    retriever = GenerativeRetriever(tiny_model, tokenizer, trie, identifier_index, config)
    expected = retriever.search({"a": "silver rocket", "b": "old violin"}, k=3)
    for qid, hits in expected.items():
        rows = out[out.qid == qid].sort_values("rank")
        assert rows["docid"].tolist() == [d for d, _ in hits]
        assert rows["score"].tolist() == pytest.approx([s for _, s in hits], abs=1e-5)
        assert rows["rank"].tolist() == list(range(1, len(hits) + 1))
    # Depth per call, and plain query lists without ids.
    deeper = loaded.predict(pd.DataFrame({"query": ["silver rocket"]}), params={"k": 5})
    assert deeper.qid.unique().tolist() == ["0"] and 3 < len(deeper) <= 5
    # Candidates are reranked by their identifiers' probability (every one, not the top k).
    candidates = ["d05", "d00", "d11", "d02"]
    reranked = loaded.predict(pd.DataFrame({"qid": ["r"], "query": ["silver rocket"],
                                            "candidates": [candidates]}))
    want = retriever.rerank({"r": "silver rocket"}, {"r": candidates})["r"]
    assert reranked["docid"].tolist() == [d for d, _ in want]
    np.testing.assert_allclose(reranked["score"], [s for _, s in want], atol=1e-5)

"""The MLflow pyfunc round trip through the one wrapper (`components.serving`): log to a
throwaway sqlite store, load, predict; the results are the Rabtriever's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.serving import OUTPUT_COLUMNS, log_ranker


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    # Artifacts under tmp_path too (the default would be ./mlruns in the working directory).
    experiment = mlflow.create_experiment("rabtriever-test", str(tmp_path / "artifacts"))
    yield mlflow, experiment
    mlflow.set_tracking_uri(previous)


def test_pyfunc_round_trip(tracking, indexed_rabtriever, toy, tiny_model_master, tmp_path):
    mlflow, experiment = tracking
    retriever = indexed_rabtriever
    retriever.save(tmp_path / "rab", with_index=False)
    retriever.save_index(tmp_path / "index")

    with mlflow.start_run(experiment_id=experiment):
        info = log_ranker("rabtriever", {"base_model": tiny_model_master,
                                         "rabtriever": tmp_path / "rab",
                                         "doc_index": tmp_path / "index"},
                          name="rabtriever", k=3)
    # Logged as code: no pickled python model anywhere in the logged files.
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    names = [p.name for p in Path(local).rglob("*")]
    assert "python_model.pkl" not in names and not any(n.endswith(".pkl") for n in names)

    model = mlflow.pyfunc.load_model(info.model_uri)
    queries = {"a": toy.queries["q0"], "b": toy.queries["q3"]}
    # A rerank row (its documents are ignored: Rabtriever answers from its index) and a search.
    frame = pd.DataFrame({"qid": ["a", "b"], "query": list(queries.values()),
                          "candidates": [["d0", "n4", "d3"], None],
                          "documents": [["ignored"] * 3, None]})
    out = model.predict(frame)
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 6

    def rows(qid):
        part = out[out.qid == qid]
        assert part["rank"].tolist() == list(range(1, len(part) + 1))
        return part["docid"].tolist(), part["score"].tolist()

    reranked = retriever.rerank({"a": queries["a"]}, {"a": ["d0", "n4", "d3"]})["a"]
    docids, scores = rows("a")
    assert docids == [d for d, _ in reranked]
    np.testing.assert_allclose(scores, [s for _, s in reranked], atol=1e-5)
    searched = retriever.search({"b": queries["b"]}, k=3)["b"]  # the logged default k
    docids, scores = rows("b")
    assert docids == [d for d, _ in searched]
    np.testing.assert_allclose(scores, [s for _, s in searched], atol=1e-5)

    # Without a candidates column every query searches; params override the depth.
    deeper = model.predict(pd.DataFrame({"query": [queries["b"]]}), params={"k": 5})
    assert deeper["qid"].unique().tolist() == ["0"]
    deepest = retriever.search({"b": queries["b"]}, k=5)["b"]
    assert deeper["docid"].tolist() == [d for d, _ in deepest]

"""The MLflow pyfunc round trip: log to a throwaway sqlite store, load, predict; the results are
the Rabtriever's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.rabtriever.pyfunc import log_rabtriever_model


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
        info = log_rabtriever_model(
            "rabtriever", tiny_model_master, tmp_path / "rab", tmp_path / "index", k=3
        )
    # Logged as code: no pickled python model anywhere in the logged files.
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    names = [p.name for p in Path(local).rglob("*")]
    assert "python_model.pkl" not in names and not any(n.endswith(".pkl") for n in names)

    model = mlflow.pyfunc.load_model(info.model_uri)
    queries = [toy.queries["q0"], toy.queries["q3"]]
    frame = pd.DataFrame({"query": queries, "candidates": [["d0", "n4", "d3"], None]})
    out = model.predict(frame)
    assert list(out.columns) == ["query", "doc_ids", "scores"] and len(out) == 2

    reranked = retriever.rerank(queries[0], ["d0", "n4", "d3"])
    assert list(out.loc[0, "doc_ids"]) == [d for d, _ in reranked]
    np.testing.assert_allclose(list(out.loc[0, "scores"]), [s for _, s in reranked], atol=1e-5)
    searched = retriever.search(queries[1], k=3)  # the logged default k
    assert list(out.loc[1, "doc_ids"]) == [d for d, _ in searched]
    np.testing.assert_allclose(list(out.loc[1, "scores"]), [s for _, s in searched], atol=1e-5)

    # Without a candidates column every query searches; params override the depth.
    deeper = model.predict(pd.DataFrame({"query": queries[1:]}), params={"k": 5})
    assert list(deeper.loc[0, "doc_ids"]) == [d for d, _ in retriever.search(queries[1], k=5)]

"""The teacher's MLflow pyfunc round trip through the one wrapper (`components.serving`): log to
a throwaway sqlite store, load, predict; the scores are the reranker's own."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from components.llm.prompts import TEMPLATES_PATH
from components.serving import OUTPUT_COLUMNS, log_ranker
from components.teacher.reranker import LLMReranker

DOCUMENTS = {"d1": "Aspirin lowers the risk of heart attacks in adults.",
             "d2": "Vitamin D and bones.", "d3": "Mid length document about sleep and memory."}


@pytest.fixture
def tracking(tmp_path):
    """A private sqlite store; the process-global URI is put back afterwards."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        yield mlflow.create_experiment("teacher-test", str(tmp_path / "artifacts"))
    finally:
        mlflow.set_tracking_uri(previous)


def test_pyfunc_round_trip(tracking, tiny_model_master, tmp_path):
    settings = {"task": "scifact", "max_doc_tokens": 32, "bf16": False}
    with mlflow.start_run(experiment_id=tracking):
        info = log_ranker("teacher", {"model": tiny_model_master, "template": TEMPLATES_PATH},
                          settings, name="teacher-reranker")
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl")))
    assert not [p.name for p in local.rglob("*") if p.suffix == ".pkl"]  # logged as code
    assert (local / "code" / "components" / "serving.py").is_file()  # loads without this repo
    assert "torch==" in (local / "requirements.txt").read_text()

    model = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"qid": ["a", "b"], "query": ["Aspirin helps the heart.", "Sleep."],
                          "candidates": [["d1", "d2", "d3"], ["d3", "d2"]],
                          "documents": [[DOCUMENTS[d] for d in ("d1", "d2", "d3")],
                                        [DOCUMENTS[d] for d in ("d3", "d2")]]})
    out = model.predict(frame)
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 5

    reranker = LLMReranker.from_pretrained(tiny_model_master, task="scifact", max_doc_tokens=32)
    reranker.index(DOCUMENTS)
    expected = reranker.rerank(dict(zip(frame.qid, frame["query"], strict=True)),
                               dict(zip(frame.qid, frame.candidates, strict=True)))
    for qid, ranked in expected.items():
        rows = out[out.qid == qid]
        assert rows["rank"].tolist() == list(range(1, len(ranked) + 1))
        assert rows["docid"].tolist() == [d for d, _ in ranked]
        np.testing.assert_allclose(rows["score"], [s for _, s in ranked], atol=1e-5)

    # The teacher reads text: it cannot search, and needs the candidates' texts.
    with pytest.raises(NotImplementedError, match="reranks candidates only"):
        model.predict(pd.DataFrame({"query": ["Sleep."]}))
    with pytest.raises(KeyError, match="no text"):
        model.predict(frame.drop(columns="documents"))

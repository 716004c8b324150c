"""Every system as one MLflow pyfunc model: one input format, one output format.

`log_ranker(system, artifacts, config)` logs any system of `SYSTEMS`; loading the model builds
that system's `components.ranker.Ranker` with its class's `from_artifacts(artifacts, config)`,
which names the artifacts it reads in `ARTIFACTS` (checked when logging).

Input: a DataFrame, one row per query:
  query       text (required)
  qid         the query's id (optional; row numbers otherwise; must be unique)
  candidates  a list of doc ids to rerank (optional; absent or None: search the indexed corpus)
  documents   the candidates' texts, aligned with `candidates` (optional): a system that reads
              text (the teacher) ranks these texts, so it can judge any corpus's documents; the
              others answer from what they indexed and ignore them.
Output: a long DataFrame, one row per ranked document: qid, rank (1-based), docid, score.
`params={"k": n}` sets the search depth (a rerank returns every candidate).

Logged as "models from code": MLflow stores a script that builds `RankerModel()` rather than a
cloudpickle, so loading unpickles nothing. The `components` package travels in `code_paths`, so
the model loads where this repository is not installed; the pip requirements are given
explicitly (MLflow's inference of them costs seconds and would list the training environment).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

from components.ranker import Ranker
from components.registry import model_code, registered_name, set_alias

# System name -> the class that loads it (`from_artifacts`); imported on use, so serving one
# system does not import the others' dependencies.
SYSTEMS = {
    "teacher": "components.teacher.reranker:LLMReranker",
    "rabtriever": "components.rabtriever.model:Rabtriever",
    "biencoder": "components.biencoder.model:BiEncoder",
    "dgr": "components.dgr.retriever:GenerativeRetriever",
}
OUTPUT_COLUMNS = ["qid", "rank", "docid", "score"]
DEFAULT_K = 100
COMPONENTS_DIR = Path(__file__).resolve().parent
REQUIREMENTS = ["mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas",
                "pyyaml"]  # fmt: skip
EXTRA_REQUIREMENTS = {"biencoder": ["faiss-cpu"]}


def system_class(system: str) -> type:
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; one of {sorted(SYSTEMS)}")
    module, _, name = SYSTEMS[system].partition(":")
    return getattr(importlib.import_module(module), name)


class RankerModel(mlflow.pyfunc.PythonModel):
    """Builds the logged system from its artifacts in `load_context`; `predict` answers the
    module's format. Subclasses may build the ranker otherwise (`make_ranker`)."""

    def load_context(self, context) -> None:
        settings = context.model_config or {}
        self.k = int(settings.get("k", DEFAULT_K))
        self.ranker = self.make_ranker(context.artifacts, settings)
        # A text-reading ranker holds the texts of the request it answers: one at a time.
        self._lock = threading.Lock()

    def make_ranker(self, artifacts: Mapping[str, str], settings: Mapping[str, Any]) -> Ranker:
        return system_class(settings["system"]).from_artifacts(artifacts,
                                                               settings.get("config") or {})

    def predict(self, context, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k") or self.k)
        with self._lock:
            return answer(self.ranker, request_frame(model_input), k)


def request_frame(model_input) -> pd.DataFrame:
    """The input as a DataFrame with a `query` column (a string or a list of them is accepted)."""
    if isinstance(model_input, pd.DataFrame):
        frame = model_input
    elif isinstance(model_input, str):
        frame = pd.DataFrame({"query": [model_input]})
    elif isinstance(model_input, dict):
        frame = pd.DataFrame(model_input)
    else:
        frame = pd.DataFrame({"query": list(model_input)})
    if "query" not in frame:
        raise ValueError(f"input needs a 'query' column, got {list(frame.columns)}")
    return frame


def answer(ranker: Ranker, frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rerank the rows with candidates, search the others; the long output frame, in row order."""
    if "qid" in frame and frame["qid"].notna().all():
        qids = frame["qid"].astype(str).tolist()
    else:
        qids = [str(i) for i in range(len(frame))]
    if len(set(qids)) != len(qids):
        raise ValueError("qid values must be unique")
    queries = dict(zip(qids, frame["query"].astype(str), strict=True))
    candidates = {qid: ids for qid, ids in zip(qids, _lists(frame, "candidates"), strict=True)
                  if ids is not None}  # fmt: skip
    corpus: dict[str, str] = {}
    for qid, texts in zip(qids, _lists(frame, "documents"), strict=True):
        if texts is None:
            continue
        ids = candidates.get(qid)
        if ids is None or len(ids) != len(texts):
            raise ValueError(f"query {qid!r}: `documents` must align with its `candidates`")
        for doc_id, text in zip(ids, texts, strict=True):
            if corpus.setdefault(doc_id, text) != text:
                raise ValueError(f"document {doc_id!r} is given two different texts")
    if ranker.reads_text and candidates:
        # This request's texts only: texts kept from an earlier request must not answer it.
        ranker.index(corpus)
    run = ranker.rerank({q: queries[q] for q in candidates}, candidates) if candidates else {}
    rest = {q: text for q, text in queries.items() if q not in candidates}
    if rest:
        run.update(ranker.search(rest, k))
    rows = [(qid, rank, doc_id, float(score)) for qid in qids
            for rank, (doc_id, score) in enumerate(run.get(qid, []), start=1)]  # fmt: skip
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _lists(frame: pd.DataFrame, column: str) -> list[list[str] | None]:
    """Per row, the column's list of strings, or None (no column; missing: None/NaN/NA)."""
    if column not in frame:
        return [None] * len(frame)
    values = []
    for value in frame[column]:
        if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
            values.append([str(item) for item in value])
        elif value is None or pd.isna(value):
            values.append(None)
        else:
            raise ValueError(f"{column} must be a list per row, got {type(value).__name__}")
    return values


def ranker_signature(k: int = DEFAULT_K) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([
            ColSpec("string", "query"),
            ColSpec("string", "qid", required=False),
            ColSpec(Array("string"), "candidates", required=False),
            ColSpec(Array("string"), "documents", required=False),
        ]),  # fmt: skip
        outputs=Schema([
            ColSpec("string", "qid"),
            ColSpec("long", "rank"),
            ColSpec("string", "docid"),
            ColSpec("double", "score"),
        ]),  # fmt: skip
        params=ParamSchema([ParamSpec("k", "long", k)]),
    )


def pip_requirements(system: str) -> list[str]:
    """What loading and answering import, pinned to the versions installed here."""
    packages = REQUIREMENTS + EXTRA_REQUIREMENTS.get(system, [])
    return [f"{name}=={version(name)}" for name in packages]


def log_ranker(
    system: str,
    artifacts: Mapping[str, str | os.PathLike],
    config: Mapping[str, Any] | None = None,
    *,
    name: str,
    k: int = DEFAULT_K,
    registered_model_name: str | None = None,
    include_code: bool = True,
    **kwargs,
):
    """Log `system` as a pyfunc model to the active run (registered when a name is given);
    returns MLflow's ModelInfo.

    `artifacts`: name -> file or folder, as the system's `from_artifacts` reads them (copied
    into the model, so it is self-contained); `config`: the JSON-able settings it reads; `k`:
    the default search depth. `include_code`: ship the `components` package (`code_paths`).
    Extra keyword arguments go to `mlflow.pyfunc.log_model`.
    """
    missing = set(system_class(system).ARTIFACTS) - set(artifacts)
    if missing:
        raise ValueError(f"{system} needs the artifacts {sorted(missing)}")
    with tempfile.TemporaryDirectory(prefix="ranker-pyfunc-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=model_code(RankerModel, tmp),  # models from code: no pickle
            artifacts={key: str(path) for key, path in artifacts.items()},
            model_config={"system": system, "k": k, "config": dict(config or {})},
            signature=ranker_signature(k),
            code_paths=[str(COMPONENTS_DIR)] if include_code else None,
            pip_requirements=pip_requirements(system),
            registered_model_name=registered_model_name,
            **kwargs,
        )


def register_challenger(system: str, model: str, dataset: str,
                        artifacts: Mapping[str, str | os.PathLike],
                        config: Mapping[str, Any] | None = None, k: int = DEFAULT_K) -> str:
    """Log `system` to the active run as a new version of `<dataset>.<model>` and point its
    `challenger` alias there (what a training stage and `flows.register` do); the version."""
    registered = registered_name(model, dataset)
    info = log_ranker(system, artifacts, config, name=model, k=k,
                      registered_model_name=registered)
    set_alias(registered, info.registered_model_version, "challenger")
    print(f"registered {registered} v{info.registered_model_version} as challenger")
    return str(info.registered_model_version)


__all__ = ["SYSTEMS", "RankerModel", "answer", "log_ranker", "ranker_signature",
           "register_challenger"]

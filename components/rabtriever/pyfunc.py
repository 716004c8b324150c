"""Rabtriever as an MLflow pyfunc model: one self-contained artifact for serving and evaluation.

The logged model carries three artifact folders: the teacher LLM (`base_model`: safetensors +
tokenizer), the predictor (`rabtriever`: `Rabtriever.save` output, which holds the prompt
template) and the document index (`doc_index`, optional when the `rabtriever` folder holds it).

It is logged as "models from code" (MLflow >= 2.12): MLflow stores a three-line script that
builds `RabtrieverPyfunc()` instead of a cloudpickle of the object, so loading the model executes
no pickle. The `components` package travels in `code_paths`, so the model loads outside this
repository too.

Input: a DataFrame with a `query` column and an optional `candidates` column (a list of doc ids
per row: rerank those; missing/None: search the whole index). Output: one row per query with
`query`, `doc_ids` (best first) and `scores`. `params={"k": ...}` sets the search depth.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from components.rabtriever.model import Rabtriever
from components.registry import model_code

ARTIFACT_BASE_MODEL = "base_model"
ARTIFACT_RABTRIEVER = "rabtriever"
ARTIFACT_INDEX = "doc_index"
DEFAULT_K = 100


class RabtrieverPyfunc(mlflow.pyfunc.PythonModel):
    """Loads a Rabtriever from the model's artifacts; reranks candidates or searches the index."""

    def load_context(self, context) -> None:
        config = context.model_config or {}
        artifacts = context.artifacts
        self.k = int(config.get("k", DEFAULT_K))
        self.retriever = Rabtriever.load(
            artifacts[ARTIFACT_RABTRIEVER],
            model_path=artifacts[ARTIFACT_BASE_MODEL],
            index_path=artifacts.get(ARTIFACT_INDEX),
            bf16=bool(config.get("bf16", False)),
        )

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "query" not in frame.columns:
            raise ValueError(f"input needs a 'query' column, got {list(frame.columns)}")
        k = int((params or {}).get("k") or self.k)
        has_candidates = "candidates" in frame.columns
        records = []
        for _, row in frame.iterrows():
            candidates = _candidate_list(row["candidates"]) if has_candidates else None
            if candidates is None:
                ranked = self.retriever.search(str(row["query"]), k)
            else:
                ranked = self.retriever.rerank(str(row["query"]), candidates)
            records.append(
                {
                    "query": row["query"],
                    "doc_ids": [docid for docid, _ in ranked],
                    "scores": [score for _, score in ranked],
                }
            )
        return pd.DataFrame(records, columns=["query", "doc_ids", "scores"])


def _candidate_list(value) -> list[str] | None:
    """A row's candidates: a list/array of ids, or None (missing values arrive as None/NaN/NA)."""
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [str(docid) for docid in value]
    if value is None or pd.isna(value):
        return None
    raise ValueError(f"candidates must be a list of doc ids, got {type(value).__name__}")


def rabtriever_signature(k: int = DEFAULT_K) -> ModelSignature:
    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "query"), ColSpec(Array("string"), "candidates", required=False)]
        ),
        outputs=Schema(
            [
                ColSpec("string", "query"),
                ColSpec(Array("string"), "doc_ids"),
                ColSpec(Array("double"), "scores"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", k)]),
    )


def default_pip_requirements() -> list[str]:
    """The packages the model needs at load time, pinned to what is installed here.

    Given explicitly so MLflow skips its requirements inference (seconds, and it imports the
    model to find out).
    """
    packages = ["torch", "transformers", "safetensors", "numpy", "pandas", "pyyaml", "mlflow"]
    return [f"{name}=={version(name)}" for name in packages]


def log_rabtriever_model(
    name: str,
    base_model_dir: str | Path,
    rabtriever_dir: str | Path,
    index_dir: str | Path | None = None,
    k: int = DEFAULT_K,
    bf16: bool = False,
    pip_requirements: Sequence[str] | None = None,
    registered_model_name: str | None = None,
    include_code: bool = True,
    **kwargs,
):
    """Log a Rabtriever as an MLflow pyfunc model (to the active run); returns the ModelInfo.

    `base_model_dir`: the teacher checkpoint the predictor was trained on (copied into the model,
    so the logged model is self-contained). `include_code`: ship the `components` package with
    the model (`code_paths`), so it loads where this repository is not importable.
    Extra keyword arguments go to `mlflow.pyfunc.log_model`.
    """
    artifacts = {
        ARTIFACT_BASE_MODEL: str(base_model_dir),
        ARTIFACT_RABTRIEVER: str(rabtriever_dir),
    }
    if index_dir is not None:
        artifacts[ARTIFACT_INDEX] = str(index_dir)
    components_dir = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=model_code(RabtrieverPyfunc, tmp),
            artifacts=artifacts,
            model_config={"k": k, "bf16": bf16},
            signature=rabtriever_signature(k),
            code_paths=[str(components_dir)] if include_code else None,
            pip_requirements=list(pip_requirements or default_pip_requirements()),
            registered_model_name=registered_model_name,
            **kwargs,
        )

"""The DGR retriever as an MLflow pyfunc model: query text in, ranked passage ids out.

Artifacts (all plain files; the wrapper is logged as code, so loading unpickles nothing):
  model        the trained causal LM folder (safetensors + tokenizer)
  trie         the identifier trie, JSON (`IdentifierTrie.save`)
  identifiers  the identifier index, JSON (`IdentifierIndex.save`)
  config       `RetrieverConfig` as JSON, plus the default depth k

Input: a DataFrame with a `query` column (and an optional `qid` column; row numbers otherwise).
Output: a long DataFrame, one row per hit: qid, rank (1-based), docid, score; `params={"k": n}`
changes the depth per call. The `components` package travels with the model (`code_paths`), so
the model loads where this repository is not installed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

from components.dgr.identifiers import IdentifierIndex
from components.dgr.retriever import GenerativeRetriever, RetrieverConfig
from components.dgr.trie import IdentifierTrie
from components.registry import model_code

OUTPUT_COLUMNS = ["qid", "rank", "docid", "score"]
COMPONENTS_DIR = Path(__file__).resolve().parent.parent


class DGRPyfuncModel(mlflow.pyfunc.PythonModel):
    """Wraps `GenerativeRetriever`; everything is loaded from the artifacts in `load_context`."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        settings = json.loads(Path(artifacts["config"]).read_text(encoding="utf-8"))
        self.default_k = int(settings.pop("default_k"))
        self.retriever = GenerativeRetriever.from_pretrained(
            artifacts["model"],
            artifacts["trie"],
            artifacts["identifiers"],
            RetrieverConfig.from_dict(settings),
        )

    def predict(self, context, model_input, params: dict | None = None) -> pd.DataFrame:
        frame = _as_frame(model_input)
        k = int((params or {}).get("k") or self.default_k)
        if "qid" in frame and frame["qid"].notna().all():
            qids = frame["qid"].astype(str).tolist()
        else:
            qids = [str(i) for i in range(len(frame))]
        if len(set(qids)) != len(qids):
            raise ValueError("qid values must be unique")
        run = self.retriever.search(dict(zip(qids, frame["query"].astype(str), strict=True)), k)
        rows = [
            (qid, rank, doc_id, float(score))
            for qid in qids
            for rank, (doc_id, score) in enumerate(run.get(qid, []), start=1)
        ]
        return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def _as_frame(model_input) -> pd.DataFrame:
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


def dgr_signature(default_k: int = 10) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", "query"), ColSpec("string", "qid", required=False)]),
        outputs=Schema(
            [
                ColSpec("string", "qid"),
                ColSpec("long", "rank"),
                ColSpec("string", "docid"),
                ColSpec("double", "score"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", "long", default_k)]),
    )


def pip_requirements() -> list[str]:
    """Exact versions of what inference imports (given explicitly: MLflow's inference of them
    costs seconds and would list the whole training environment)."""
    from importlib.metadata import version

    packages = ["mlflow", "torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas"]
    return [f"{name}=={version(name)}" for name in packages]


def log_dgr_model(
    model_dir: str | os.PathLike,
    trie: IdentifierTrie | str | os.PathLike,
    index: IdentifierIndex | str | os.PathLike,
    config: RetrieverConfig | None = None,
    default_k: int = 10,
    name: str = "dgr_model",
    registered_model_name: str | None = None,
    code_paths: list[str] | None = None,
):
    """Log the retriever as a pyfunc model (call inside `mlflow.start_run()`); returns ModelInfo.

    `trie` and `index` may be objects or the JSON files they were saved to.
    """
    config = config or RetrieverConfig()
    with tempfile.TemporaryDirectory(prefix="dgr-pyfunc-") as tmp:
        tmp = Path(tmp)
        trie_path, index_path = Path(tmp / "trie.json"), Path(tmp / "identifiers.json")
        if isinstance(trie, IdentifierTrie):
            trie.save(trie_path)
        else:
            trie_path = Path(trie)
        if isinstance(index, IdentifierIndex):
            index.save(index_path)
        else:
            index_path = Path(index)
        config_path = tmp / "retriever_config.json"
        config_path.write_text(json.dumps({**config.to_dict(), "default_k": default_k}))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=model_code(DGRPyfuncModel, tmp),  # models from code: no pickle
            artifacts={
                "model": str(model_dir),
                "trie": str(trie_path),
                "identifiers": str(index_path),
                "config": str(config_path),
            },
            code_paths=code_paths if code_paths is not None else [str(COMPONENTS_DIR)],
            signature=dgr_signature(default_k),
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )

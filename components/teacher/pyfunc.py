"""The teacher reranker as an MLflow pyfunc model.

Input: a DataFrame with `query` and `document` columns (one row per pair).
Output: a DataFrame with a `score` column, log p(Yes) - log p(No) for each row.
The model directory (transformers checkpoint + tokenizer) and the prompt template travel as
artifacts, so `models:/teacher-reranker@challenger` scores exactly as the pipeline did. Logged
as "models from code": loading it runs a script that builds the wrapper, no unpickling.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd

from components.registry import model_code

PIP_REQUIREMENTS = ["torch==2.13.0", "transformers==5.23.0", "pandas", "pyyaml"]


class TeacherRerankerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from components.llm.prompts import PromptTemplate
        from components.teacher.reranker import LLMReranker

        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        template = PromptTemplate.load(settings["task"], path=context.artifacts["template"])
        self.reranker = LLMReranker.from_pretrained(
            context.artifacts["model"],
            template=template,
            max_doc_tokens=settings["max_doc_tokens"],
            bf16=settings["bf16"],
        )

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        pairs = list(zip(model_input["document"], model_input["query"], strict=True))
        return pd.DataFrame({"score": self.reranker.score_pairs(pairs)})


def log_teacher_model(
    model_dir: Path,
    template_path: Path,
    task: str,
    max_doc_tokens: int,
    bf16: bool,
    workdir: Path,
    registered_name: str | None = None,
):
    """Log the teacher under the active run; register it when `registered_name` is given."""
    settings = workdir / "teacher_settings.json"
    settings.write_text(json.dumps({"task": task, "max_doc_tokens": max_doc_tokens, "bf16": bf16}))
    from mlflow.models import infer_signature

    # A signature instead of an input example: MLflow would load and run the model to check one.
    signature = infer_signature(
        pd.DataFrame({"query": ["q"], "document": ["d"]}), pd.DataFrame({"score": [0.0]})
    )
    return mlflow.pyfunc.log_model(
        name="teacher-reranker",
        python_model=model_code(TeacherRerankerModel, workdir),  # no pickle
        artifacts={
            "model": str(model_dir),
            "template": str(template_path),
            "settings": str(settings),
        },
        code_paths=[str(Path(__file__).resolve().parents[1])],  # the `components` package
        pip_requirements=PIP_REQUIREMENTS,
        signature=signature,
        registered_model_name=registered_name,
    )

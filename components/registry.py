"""MLflow model registry helpers: per-dataset model names, aliases, pyfunc models from code."""

from __future__ import annotations

import os
from pathlib import Path

from mlflow import MlflowClient

# The script MLflow runs to build a pyfunc model object on load ("models from code").
_MODEL_CODE = """\
import mlflow

from {module} import {name}

mlflow.models.set_model({name}())
"""


def model_code(cls: type, folder: str | os.PathLike) -> str:
    """Write the "models from code" script that builds `cls()` into `folder`; its path.

    Given as `python_model` to `mlflow.pyfunc.log_model`, MLflow stores this script rather than
    a cloudpickle of a model object, so loading the model unpickles nothing.
    """
    path = Path(folder) / f"{cls.__name__}_model.py"
    path.write_text(_MODEL_CODE.format(module=cls.__module__, name=cls.__name__))
    return str(path)


def registered_name(model: str, dataset: str) -> str:
    """The registry name of `model` (`teacher-reranker`, `rabtriever`, `dgr`) as the pipeline of
    `dataset` trains it: `<dataset>.<model>`. Each dataset has its own champion, so a run on a
    second dataset never challenges the first one's (`models:/scifact.rabtriever@champion`)."""
    return f"{dataset}.{model}"


def set_alias(name: str, version: str | int, alias: str = "challenger") -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def version_of(name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None

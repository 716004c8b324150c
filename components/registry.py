"""MLflow model registry helpers: register a logged model and point an alias at it."""

from __future__ import annotations

from mlflow import MlflowClient


def set_alias(name: str, version: str | int, alias: str = "challenger") -> None:
    MlflowClient().set_registered_model_alias(name, alias, str(version))


def version_of(name: str, alias: str) -> str | None:
    """The version an alias points to, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None

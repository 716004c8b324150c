"""Per-repository runtime environment.

Every entry point calls `configure_environment()` before importing Prefect, MLflow,
DVC or Hugging Face libraries, so that all state stays inside the repository
(PREFECT_HOME, the MLflow sqlite store, artifacts under `mlruns/`), telemetry is
off and no code tries to reach a model hub. Values already set by the user win, so
pointing MLFLOW_TRACKING_URI at a remote `mlflow server` just works, and a user who has a
Prefect profile of their own (`prefect profile use ...`, `prefect cloud login`) keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_root() -> Path:
    """The project root; overridable for tests that run on a copy of the repo."""
    return Path(os.environ.get("RERANK_DISTILL_ROOT", REPO_ROOT)).resolve()


def default_tracking_uri(root: Path | None = None) -> str:
    return f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def configure_environment(root: Path | None = None) -> None:
    root = root or repo_root()
    defaults = {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "MLFLOW_TRACKING_URI": default_tracking_uri(root),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GIT_PYTHON_REFRESH": "quiet",
    }
    if user_prefect_profile() is not None:
        # The user's own Prefect profile (its server URL, a Cloud login) applies as it would to
        # any Prefect command; the repository's .prefect/ is only the default for those without.
        del defaults["PREFECT_HOME"]
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def user_prefect_profile() -> Path | None:
    """The user's Prefect profiles file when one is configured (PREFECT_PROFILES_PATH, or
    profiles.toml under PREFECT_HOME or ~/.prefect), else None."""
    explicit = os.environ.get("PREFECT_PROFILES_PATH")
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(explicit).expanduser() if explicit else home / "profiles.toml"
    return path if path.is_file() else None

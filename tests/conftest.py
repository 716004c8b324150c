"""Session-wide test set-up: offline, and all tracking/orchestration state in a tmp dir.

The repository's own mlflow.db and .prefect/ are never touched by the tests.
"""

import os
import tempfile
from pathlib import Path

_STATE = Path(tempfile.mkdtemp(prefix="rerank-distill-tests-"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_STATE / 'mlflow.db'}"
os.environ["PREFECT_HOME"] = str(_STATE / "prefect")
os.environ.pop("PREFECT_API_URL", None)

from components.settings import configure_environment  # noqa: E402

configure_environment()

"""Prefect flows, one per pipeline stage (`python -m flows.<stage>`), plus `flows.pipeline`.

The environment is configured on import, before Prefect or MLflow are loaded, so every
entry point keeps its state inside the repository.
"""

from components.settings import configure_environment

configure_environment()

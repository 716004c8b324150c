"""Prefect flows, one per pipeline stage (`python -m flows.<stage>`), plus `flows.pipeline`.

Operations beside them: `flows.deploy` (the scheduled deployment of `flows.pipeline`),
`flows.services` (start/stop the Prefect server, the MLflow UI and the deployment) and
`flows.teacher_worker` (the teacher stage's training, one process per rank under a launcher).

The environment is configured on import, before Prefect or MLflow are loaded, so every
entry point keeps its state inside the repository.
"""

from components.settings import configure_environment

configure_environment()

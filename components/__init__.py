"""Library for reranker distillation: data, validation, search, models, losses, evaluation.

Nothing in this package imports Prefect; orchestration lives in `flows/`.
"""

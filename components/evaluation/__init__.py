"""Evaluation: metrics, per-query scores and significance tests over TREC runs."""

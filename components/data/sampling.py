"""Deterministic query subsets, so every stage evaluates on exactly the same queries."""

from __future__ import annotations

import random


def sample_query_ids(query_ids: list[str] | set[str], n: int, seed: int) -> list[str]:
    """A sorted, seeded sample of `n` ids (all ids when n == 0 or n >= len)."""
    ids = sorted(query_ids)
    if n == 0 or n >= len(ids):
        return ids
    return sorted(random.Random(seed).sample(ids, n))

"""Per-system serving cost: per-query latency and index size, kept beside each run.

Every stage that writes a run also writes `runs/<system>/cost.json`, measured on the machine
that ran the stage: the wall time of answering each query on its own (what a user waits for:
encoding the query, searching or reranking its candidates), and the bytes of what the system
must keep on disk to answer (its index). `evaluate` reads these files into the results table,
so the costs are versioned with the run they describe.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np

from components.atomic import write_text_atomic

COST_FILE = "cost.json"
T = TypeVar("T")


def folder_bytes(*paths: str | os.PathLike) -> int:
    """Bytes on disk of files and folders (recursively)."""
    total = 0
    for path in map(Path, paths):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def time_each(items: Iterable[T], answer: Callable[[T], object]) -> tuple[list, list[float]]:
    """Call `answer(item)` for each item; return the answers and each call's seconds."""
    answers, seconds = [], []
    for item in items:
        started = time.perf_counter()
        answers.append(answer(item))
        seconds.append(time.perf_counter() - started)
    return answers, seconds


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """Median and 95th percentile of per-query latencies, in milliseconds."""
    if not seconds:
        raise ValueError("no latencies measured")
    ms = 1000 * np.asarray(seconds, dtype=np.float64)
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "queries": int(ms.size)}


def write_cost(run_dir: str | os.PathLike, seconds: list[float], index_bytes: int,
               index: str) -> dict:
    """Write `cost.json` for the run in `run_dir`; `index` says what the bytes count."""
    cost = {"latency": latency_summary(seconds), "index_bytes": int(index_bytes),
            "index": index}
    write_text_atomic(Path(run_dir) / COST_FILE, json.dumps(cost, indent=2) + "\n")
    return cost


def read_cost(run_dir: str | os.PathLike) -> dict | None:
    path = Path(run_dir) / COST_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

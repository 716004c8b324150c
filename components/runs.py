"""TREC run files: the exchange format between retrieval stages and evaluation.

A run maps query id -> list of (doc id, score). Every system in the pipeline writes
one run file per query split; `evaluate` scores every run file it finds.
Format per line: `qid Q0 docid rank score tag` (trec_eval's format).
"""

from __future__ import annotations

import os
from pathlib import Path

from components.atomic import atomic_path

Run = dict[str, list[tuple[str, float]]]


def write_trec_run(path: str | os.PathLike, run: Run, tag: str) -> None:
    """Write `run` sorted by descending score (ties broken by doc id), atomically."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for qid in sorted(run):
            ranked = sorted(run[qid], key=lambda pair: (-pair[1], pair[0]))
            for rank, (docid, score) in enumerate(ranked, start=1):
                out.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")


def read_trec_run(path: str | os.PathLike) -> tuple[Run, str]:
    """Read a run file; return the run and its tag. Malformed lines raise with file:line."""
    run: Run = {}
    tag = ""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{number}: expected 6 columns, found {len(fields)}")
            qid, _, docid, _, score, tag = fields
            try:
                run.setdefault(qid, []).append((docid, float(score)))
            except ValueError:
                raise ValueError(f"{path}:{number}: score {score!r} is not a number") from None
    return run, tag

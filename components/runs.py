"""TREC run files: the exchange format between retrieval stages and evaluation.

A run maps query id -> list of (doc id, score). Every system in the pipeline writes
one run file per query split; `evaluate` scores every run file it finds.
Format per line: `qid Q0 docid rank score tag` (trec_eval's format). A query with no hits
has no line, so each run file has a `.topics` sidecar listing the queries the system was
asked: `evaluate` scores those, an empty ranking as 0, instead of dropping the query.
"""

from __future__ import annotations

import os
from pathlib import Path

from components.atomic import atomic_path

Run = dict[str, list[tuple[str, float]]]


def topics_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path).with_suffix(".topics")


def write_trec_run(path: str | os.PathLike, run: Run, tag: str, topics=None) -> None:
    """Write `run` sorted by descending score (ties broken by doc id), atomically, and the
    `.topics` sidecar: `topics` (the queries asked; default: the run's own queries)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    topics = sorted(set(run) if topics is None else set(topics))
    if set(run) - set(topics):
        raise ValueError(f"{path}: the run answers queries it was not asked: "
                         f"{sorted(set(run) - set(topics))[:5]}")
    with atomic_path(topics_path(path)) as tmp:
        tmp.write_text("".join(f"{qid}\n" for qid in topics), encoding="utf-8")
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


def read_run_topics(run_path: str | os.PathLike) -> list[str] | None:
    """The queries a run was asked (its `.topics` sidecar), or None for a run without one."""
    path = topics_path(run_path)
    if not path.is_file():
        return None
    return [line for line in path.read_text(encoding="utf-8").split() if line]

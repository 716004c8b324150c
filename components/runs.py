"""TREC run files: the exchange format between retrieval stages and evaluation.

A run maps query id -> list of (doc id, score). Every system in the pipeline writes
one run file per query split; `evaluate` scores every run file it finds.
Format per line: `qid Q0 docid rank score tag` (trec_eval's format). A query with no hits
has no line, so each run file has a `.topics` sidecar listing the queries the system was
asked: `evaluate` scores those, an empty ranking as 0, instead of dropping the query.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from components.atomic import atomic_path

Run = dict[str, list[tuple[str, float]]]


# Run files and qrels are whitespace-separated: an id with a space, tab or newline would split
# a line or inject new ones, and trec_eval (C) reads up to a NUL. Ids are non-empty, with no
# whitespace or control characters (validate's `*.id_token` rule checks the data against the
# same pattern). \A..\Z, not ^..$: `$` also matches before a final newline.
ID_TOKEN = r"\A[^\s\x00-\x1f\x7f-\x9f]+\Z"
_ID_TOKEN = re.compile(ID_TOKEN)


def _is_token(item) -> bool:
    return isinstance(item, str) and _ID_TOKEN.match(item) is not None


def topics_path(run_path: str | os.PathLike) -> Path:
    return Path(run_path).with_suffix(".topics")


def write_trec_run(path: str | os.PathLike, run: Run, tag: str, topics=None) -> None:
    """Write `run` sorted by descending score (ties broken by doc id), atomically, and the
    `.topics` sidecar: `topics` (the queries asked; default: the run's own queries)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"run tag must be a non-empty word without spaces, got {tag!r}")
    asked = set(run) if topics is None else set(topics)
    bad = [i for i in (*asked, *run, *(d for hits in run.values() for d, _ in hits))
           if not _is_token(i)]
    if bad:
        raise ValueError(f"{path}: ids must be non-empty strings without whitespace or control "
                         f"characters (validate's *.id_token rule), got {[*map(repr, bad[:5])]}")
    topics = sorted(asked)
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

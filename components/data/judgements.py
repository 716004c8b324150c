"""Who reads relevance judgements, and which: the one door every qrels read goes through.

The rule of evidence this module serves: test judgements reach `evaluate` only (and
`validate`, which checks the file's form and writes the test topic ids, no grades). Model
stages read the judgements of the training queries they train on; the held-out dev queries'
judgements are read where a choice is made (`evaluate`'s dev rows, `promote`, and `rank_lists`
when it chooses `first_stage_weight: auto`).

Every read of a qrels file calls `record_read`. With `RERANK_QRELS_AUDIT=<file>` set, each
read appends one JSON line `{"stage", "file"}` there, so a test can run the whole pipeline
and assert that no other stage opened the test split (`tests/e2e/test_pipeline.py`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

AUDIT_ENV = "RERANK_QRELS_AUDIT"
STAGE_ENV = "RERANK_STAGE"  # set by flows._stage.stage_flow for the stage's process


def current_stage() -> str:
    """The running stage's name, or the script's name outside a stage."""
    return os.environ.get(STAGE_ENV) or Path(sys.argv[0]).stem or "python"


def record_read(qrels_file: Path) -> None:
    audit = os.environ.get(AUDIT_ENV)
    if not audit:
        return
    line = json.dumps({"stage": current_stage(), "file": str(Path(qrels_file).resolve())})
    with open(audit, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def restrict(qrels: dict[str, dict[str, int]], query_ids) -> dict[str, dict[str, int]]:
    """The judgements of `query_ids` only (those that have any)."""
    return {q: qrels[q] for q in query_ids if q in qrels}


def read_judgements(dataset_dir: Path, split: str, query_ids=None) -> dict[str, dict[str, int]]:
    """qid -> {docid: grade} of `dataset_dir/qrels/<split>.tsv`, only for `query_ids` when
    given (e.g. `QuerySplits.train`: a training stage never sees the held-out queries')."""
    from components.data.beir import QRELS_HEADER, read_qrels

    path = Path(dataset_dir) / "qrels" / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no qrels for split {split!r}")
    record_read(path)
    qrels: dict[str, dict[str, int]] = {}
    for qid, docid, score in read_qrels(path)[QRELS_HEADER].itertuples(index=False):
        qrels.setdefault(qid, {})[docid] = int(score)
    return qrels if query_ids is None else restrict(qrels, query_ids)

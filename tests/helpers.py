"""Build small BEIR folders for tests, good or deliberately broken; params sections."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config import load_params
from components.settings import REPO_ROOT


def section(name: str, **overrides: Any):
    """The repo's params.yaml section `name`, validated, with `overrides` (key=value) applied:
    the way tests get trainer settings, so params.yaml stays the one place defaults are written."""
    params = load_params(REPO_ROOT / "params.yaml",
                         overrides={f"{name}.{key}": value for key, value in overrides.items()})
    return getattr(params, name)

GOOD_CORPUS = [
    {"_id": "d1", "title": "Aspirin and heart attacks",
     "text": "Daily low-dose aspirin reduces the risk of myocardial infarction in adults."},
    {"_id": "d2", "title": "Vitamin D",
     "text": "Vitamin D supplementation shows no effect on bone fracture rates in the elderly."},
    {"_id": "d3", "title": "",
     "text": "Regular exercise improves insulin sensitivity in patients with type 2 diabetes."},
    {"_id": "d4", "title": "Sleep",
     "text": "Short sleep duration is associated with obesity in children and adolescents."},
    {"_id": "d5", "title": "Coffee",
     "text": "Coffee consumption is linked to a lower risk of Parkinson disease."},
]
GOOD_QUERIES = [
    {"_id": "q1", "text": "aspirin lowers myocardial infarction risk"},
    {"_id": "q2", "text": "exercise and insulin sensitivity in diabetes"},
    {"_id": "q3", "text": "coffee protects against Parkinson disease"},
    {"_id": "q4", "text": "sleep duration and childhood obesity"},
]
GOOD_QRELS = {
    "train": [("q1", "d1", "1"), ("q2", "d3", "1")],
    "test": [("q3", "d5", "1"), ("q4", "d4", "2"), ("q4", "d2", "0")],
}


def write_beir(root: Path, corpus=None, queries=None, qrels=None, *, corpus_lines=None,
               qrels_header="query-id\tcorpus-id\tscore") -> Path:
    """Write a BEIR folder. `corpus_lines` (raw strings or bytes) overrides `corpus`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    corpus = GOOD_CORPUS if corpus is None else corpus
    queries = GOOD_QUERIES if queries is None else queries
    qrels = GOOD_QRELS if qrels is None else qrels
    lines = corpus_lines if corpus_lines is not None else [json.dumps(d) for d in corpus]
    with open(root / "corpus.jsonl", "wb") as out:
        for line in lines:
            out.write((line if isinstance(line, bytes) else line.encode()) + b"\n")
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        body = "".join("\t".join(row) + "\n" for row in rows)
        (root / "qrels" / f"{split}.tsv").write_text(qrels_header + "\n" + body)
    return root

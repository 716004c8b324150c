"""BM25 with Pyserini: a Lucene index of the corpus and batch retrieval.

Indexing follows Pyserini's BEIR "flat" regression: one `contents` field holding
title and text joined by a space, default Lucene English analyzer.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from components.atomic import atomic_path
from components.runs import Run
from components.search.pyserini_env import configure_pyserini


def flat_contents(title: str, text: str) -> str:
    return f"{title} {text}".strip() if title else text


def build_index(corpus: dict[str, dict[str, str]], index_dir: str | os.PathLike,
                threads: int = 2) -> Path:
    """Index `corpus` (id -> {title, text}) into `index_dir` atomically."""
    configure_pyserini()
    from pyserini.pyclass import autoclass  # configures the Anserini classpath first

    index_dir = Path(index_dir)
    with tempfile.TemporaryDirectory(prefix="bm25-collection-") as collection:
        with open(Path(collection) / "docs.jsonl", "w", encoding="utf-8") as out:
            for docid, doc in corpus.items():
                record = {"id": docid, "contents": flat_contents(doc["title"], doc["text"])}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        with atomic_path(index_dir) as tmp:
            args = ["-collection", "JsonCollection", "-input", collection, "-index", str(tmp),
                    "-generator", "DefaultLuceneDocumentGenerator", "-threads", str(threads),
                    "-storePositions", "-storeDocvectors", "-storeRaw", "-quiet"]
            autoclass("io.anserini.index.IndexCollection").main(args)
            if not any(tmp.iterdir()):
                raise RuntimeError(f"Anserini wrote no index into {tmp}")
    return index_dir


def open_searcher(index_dir: str | os.PathLike, k1: float = 0.9, b: float = 0.4):
    """A Pyserini LuceneSearcher over `index_dir` with BM25(k1, b)."""
    configure_pyserini()
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(index_dir))
    searcher.set_bm25(k1, b)
    return searcher


def search(index_dir: str | os.PathLike, queries: dict[str, str], k: int, k1: float = 0.9,
           b: float = 0.4, threads: int = 2) -> Run:
    """BM25 top-k for every query; returns qid -> [(docid, score)]."""
    searcher = open_searcher(index_dir, k1, b)
    qids = sorted(queries)
    hits = searcher.batch_search([queries[q] for q in qids], qids, k=k, threads=threads)
    return {qid: [(hit.docid, float(hit.score)) for hit in hits.get(qid, [])] for qid in qids}


def remove_index(index_dir: str | os.PathLike) -> None:
    shutil.rmtree(index_dir, ignore_errors=True)

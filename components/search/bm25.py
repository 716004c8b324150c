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
            check_complete(tmp, corpus)
    return index_dir


# Lucene refuses a document holding a term longer than this many UTF-8 bytes ("immense term")
# and Anserini goes on without it, saying so only in its log.
MAX_TERM_BYTES = 32766


def check_complete(index_dir: Path, corpus: dict[str, dict[str, str]]) -> None:
    """Raise DataFormatError naming each corpus document the index does not hold, and why
    where that can be told, so a search never silently misses part of the corpus."""
    from pyserini.index.lucene import LuceneIndexReader

    reader = LuceneIndexReader(str(index_dir))
    if reader.stats()["documents"] == len(corpus):
        return
    problems = []
    for docid, doc in corpus.items():
        internal = reader.convert_collection_docid_to_internal_docid(docid)
        if internal is not None and internal >= 0:
            continue
        longest = max((len(t.encode()) for t in (docid, *flat_contents(doc["title"],
                                                                       doc["text"]).split())),
                      default=0)
        why = (f"it holds a term of {longest} bytes; Lucene's limit is {MAX_TERM_BYTES}"
               if longest > MAX_TERM_BYTES else "see Anserini's log above for Lucene's reason")
        problems.append(f"document {docid[:80]!r} is not in the BM25 index: {why}")
    if problems:
        from components.data.beir import DataFormatError

        raise DataFormatError(problems)


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

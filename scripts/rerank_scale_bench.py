"""Reranking a first stage's top-N: per-query latency and memory of the teacher and Rabtriever.

At scale both models rerank a first stage's candidates (BM25 from Pyserini's Lucene index, or a
FAISS index) instead of the whole corpus. For a sample of the evaluated test queries this
reranks BM25's top-N (the `bm25` stage's run) for several N, one query at a time as a served
request is timed, with the pipeline's trained teacher and Rabtriever. Rabtriever's documents
are encoded beforehand, untimed (that is its offline index); the teacher reads each pair whole.
Memory is the peak resident growth during a query's call, sampled every 2 ms (run it with
`MALLOC_MMAP_THRESHOLD_=65536`, so that freed tensors leave the resident set); the Rabtriever
index bytes per document are those of the stored pooled embedding plus token states.

    MALLOC_MMAP_THRESHOLD_=65536 .venv/bin/python scripts/rerank_scale_bench.py --queries 5 \
        --n 10 --n 25 --n 50 --n 100
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
import typer  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.splits import QuerySplits  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.llm.prompts import PromptTemplate  # noqa: E402
from components.rabtriever.model import Rabtriever  # noqa: E402
from components.runs import read_trec_run  # noqa: E402
from components.teacher.data import document_text  # noqa: E402
from components.teacher.reranker import LLMReranker  # noqa: E402


def peak_growth(call) -> tuple[float, float]:
    """(seconds, peak resident-memory growth in MB) of `call()`."""
    process, peak, done = psutil.Process(), [0], threading.Event()
    base = process.memory_info().rss

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - base)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.perf_counter()
    call()
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    return seconds, peak[0] / 1e6


def main(queries: int = 5, n: list[int] = typer.Option([10, 25, 50, 100]),
         params: Path = typer.Option(Path("params.yaml")),
         out: Path = typer.Option(None, help="JSON of the rows")) -> None:
    config = load_params(params)
    torch.manual_seed(config.seed)
    layout = Layout(config.data.name)
    dataset = load_beir(config.data.dataset_dir(), qrels=False)
    texts = {d: document_text(doc) for d, doc in dataset.corpus_dict().items()}
    asked = QuerySplits.load(layout.splits_file).evaluated[:queries]
    query_text = dataset.queries_dict()
    bm25, _ = read_trec_run(layout.run_dir("bm25") / f"{config.data.test_split}.trec")
    deepest = max(n)
    pools = {q: [d for d, _ in bm25[q][:deepest]] for q in asked}

    teacher = LLMReranker.from_pretrained(
        layout.teacher_model, template=PromptTemplate.load(config.teacher.task),
        max_doc_tokens=config.teacher.max_doc_tokens, bf16=config.teacher.bf16)
    student = Rabtriever.load(layout.root / "rabtriever", model=teacher.model,
                              tokenizer=teacher.tokenizer, bf16=config.teacher.bf16,
                              index_path=None)
    wanted = sorted({d for pool in pools.values() for d in pool})
    started = time.perf_counter()
    student.index({d: texts[d] for d in wanted})
    encode_s = time.perf_counter() - started
    index = student.doc_index
    index_bytes = index.embeddings.numel() * 4 + (
        sum(s.numel() * s.element_size() for s in index.tokens.states.values())
        + index.tokens.token_ids.numel() * 4 if index.tokens is not None else 0)
    print(f"encoded {len(wanted)} documents offline in {encode_s:.0f}s; "
          f"{index_bytes / len(wanted) / 1e3:.0f} KB a document", flush=True)
    teacher.index({d: texts[d] for d in wanted})
    # One warm-up call each: the first forward pays one-off allocation and kernel choice.
    first = asked[0]
    teacher.rerank({first: query_text[first]}, {first: pools[first][:2]})
    student.rerank({first: query_text[first]}, {first: pools[first][:2]})

    rows = []
    for depth in n:
        for name, model in (("teacher", teacher), ("rabtriever", student)):
            timings = [peak_growth(lambda q=q, m=model, k=depth: m.rerank(
                {q: query_text[q]}, {q: pools[q][:k]})) for q in asked]
            seconds, megabytes = zip(*timings, strict=True)
            rows.append({"system": name, "n": depth, "queries": len(asked),
                         "median_ms": round(1000 * float(np.median(seconds)), 1),
                         "ms_per_candidate": round(1000 * float(np.median(seconds)) / depth, 2),
                         "peak_mb": round(float(max(megabytes)), 1)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {"rows": rows, "documents_encoded": len(wanted), "encode_s": round(encode_s, 1),
               "rabtriever_index_kb_per_doc": round(index_bytes / len(wanted) / 1e3, 1)}
    if out:
        out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    typer.run(main)

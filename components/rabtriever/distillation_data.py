"""What Rabtriever's training reads: cached embeddings and the teacher's outputs per pair.

Training never runs the LLM. Every input is cached once (`build_training_data`, or the
`rabtriever` stage from `rank_lists`' stored states):
- query embeddings  [Q, H]: `encode_queries` (pre-norm answer-position state, query prompt);
- doc embeddings    [D, H]: `encode_documents` (post-norm pooled states, document prompt), and
  the documents' token states when the predictor reads them (the attention form's latent);
- per teacher-scored (query, doc) pair: the teacher's answer-position state with the document in
  the prompt (`PairStates.hidden`, AFTER the final norm) and its logits there, either the full
  vocabulary [P, V] or the top-k (`PairStates.topk_ids` / `topk_logits`, [P, k]);
- when the predictor reads them, per pair its late-interaction features [P, k] (MaxSim of the
  two texts' token states; `components/rabtriever/late_interaction.py`), which hold no
  trainable part.
On-policy rounds (`components/rabtriever/rounds.py`) append documents and teacher pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from components.rabtriever.late_interaction import TokenStates
from components.rabtriever.model import Rabtriever
from components.rabtriever.predictor import Predictor
from components.teacher.reranker import LLMReranker, PairStates

log = logging.getLogger(__name__)


@dataclass
class TeacherPairs:
    """The teacher's outputs for the (query, doc) pairs it scored, row-aligned."""

    query_index: torch.Tensor  # [P] long, row in the query embeddings
    doc_index: torch.Tensor  # [P] long, row in the document embeddings
    hidden: torch.Tensor  # [P, H] answer-position state AFTER the final norm
    logits: torch.Tensor  # [P, V] full vocab, or [P, k] values at `logit_ids`
    logit_ids: torch.Tensor | None = None  # [P, k] vocab ids; None: `logits` is full vocab
    scores: torch.Tensor | None = None  # [P] teacher scores (only for agreement statistics)

    def __post_init__(self):
        n = len(self.query_index)
        if not (len(self.doc_index) == len(self.hidden) == len(self.logits) == n):
            raise ValueError("query_index, doc_index, hidden and logits must have one row per pair")
        if self.logit_ids is not None and self.logit_ids.shape != self.logits.shape:
            raise ValueError(f"logit ids {self.logit_ids.shape} != logits {self.logits.shape}")

    @classmethod
    def concat(cls, parts: Sequence[TeacherPairs]) -> TeacherPairs:
        def cat(name: str) -> torch.Tensor | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else torch.cat(values)

        return cls(*(cat(name) for name in ("query_index", "doc_index", "hidden", "logits",
                                             "logit_ids", "scores")))  # fmt: skip

    @classmethod
    def from_pair_states(
        cls, query_index: Sequence[int], doc_index: Sequence[int], states: PairStates
    ) -> TeacherPairs:
        """From `LLMReranker.forward_pair_states(pairs, top_k=k)` (k > 0: its top-k logits)."""
        if states.topk_logits is None:
            raise ValueError("forward_pair_states was run without top_k; no logits to distil")
        return cls(
            query_index=torch.as_tensor(query_index, dtype=torch.long),
            doc_index=torch.as_tensor(doc_index, dtype=torch.long),
            hidden=states.hidden,
            logits=states.topk_logits,
            logit_ids=states.topk_ids,
            scores=states.scores,
        )


@dataclass
class JepaTrainingData:
    """Everything training reads, cached: embeddings plus the teacher's pair outputs."""

    query_embs: torch.Tensor  # [Q, H] pre-norm query states
    doc_embs: torch.Tensor  # [D, H] pooled post-norm document states
    pairs: TeacherPairs
    query_ids: Sequence[str] | None = None  # names for the sampling record; default: row numbers
    doc_ids: Sequence[str] | None = None
    features: torch.Tensor | None = None  # [P, k] late-interaction features, when read
    doc_tokens: TokenStates | None = None  # per document row (attention predictor's latent)

    @classmethod
    def encoded(cls, retriever: Rabtriever, queries: Sequence[str], query_ids: Sequence[str],
                doc_ids: Sequence[str], doc_embs: torch.Tensor, doc_tokens: TokenStates | None,
                pairs: TeacherPairs, batch_size: int = 16) -> JepaTrainingData:  # fmt: skip
        """The training data of these teacher pairs: the query texts (one per query row)
        encoded here, the documents' encodings as given, and the pair features when the
        retriever's predictor reads them."""
        return cls(
            query_embs=retriever.encode_queries(queries, batch_size),
            doc_embs=doc_embs,
            pairs=pairs,
            query_ids=list(query_ids),
            doc_ids=list(doc_ids),
            features=retriever.pair_features(queries, doc_embs, doc_tokens, pairs.query_index,
                                             pairs.doc_index, batch_size),  # fmt: skip
            doc_tokens=doc_tokens,
        )

    def pair_features(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None if self.features is None else self.features[rows]

    def predict(self, predictor: Predictor, rows: torch.Tensor) -> torch.Tensor:
        """The predictor's [len(rows), H] prediction for these teacher-pair rows."""
        pairs = self.pairs
        return self.predict_pairs(predictor, pairs.query_index[rows], pairs.doc_index[rows],
                                  self.pair_features(rows))  # fmt: skip

    def predict_pairs(
        self,
        predictor: Predictor,
        query_rows: torch.Tensor,
        doc_rows: torch.Tensor,
        features: torch.Tensor | None,
    ) -> torch.Tensor:
        """The prediction for (query row, document row) pairs, teacher-scored or not."""
        device = next(predictor.parameters()).device
        states = mask = None
        if predictor.latent_layer is not None:
            if self.doc_tokens is None:
                raise ValueError("the attention predictor trains on document token states")
            latent = self.doc_tokens.select(doc_rows, trim=True)
            states = latent.states[predictor.latent_layer].to(device)
            mask = latent.mask.to(device)
        return predictor(
            self.query_embs[query_rows].to(device),
            self.doc_embs[doc_rows].to(device),
            None if features is None else features.to(device),
            states,
            mask,
        )

    def add_documents(self, doc_ids: Sequence[str], embs: torch.Tensor,
                      tokens: TokenStates | None) -> None:  # fmt: skip
        """Append document rows (ids new to this data, in order)."""
        self.doc_ids = [*(self.doc_ids or map(str, range(len(self.doc_embs)))), *doc_ids]
        if (self.doc_tokens is None) != (tokens is None):
            raise ValueError("documents with token states and without cannot share one table")
        self.doc_embs = torch.cat([self.doc_embs, embs])
        if self.doc_tokens is not None:
            self.doc_tokens = TokenStates.concat([self.doc_tokens, tokens])

    def add_pairs(self, pairs: TeacherPairs, features: torch.Tensor | None) -> None:
        """Append teacher-scored pairs (rows of the existing queries and documents)."""
        self.pairs = TeacherPairs.concat([self.pairs, pairs])
        if self.features is not None and features is not None:
            self.features = torch.cat([self.features, features])


def build_training_data(
    retriever: Rabtriever,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    pools: Mapping[str, Sequence[str]],
    top_k: int = 64,
    batch_size: int = 8,
) -> JepaTrainingData:
    """Run the frozen LLM once over everything training needs.

    `pools`: qid -> the documents the teacher ranked for it (e.g. its top-n of the BM25 run).
    The teacher is the retriever's own LLM with the same prompt and truncation, which is what
    makes its states valid targets for this student. Only pooled documents are encoded.
    `top_k`: teacher logits cached per pair (k of the vocabulary; the full row would be 49k).
    """
    qids = [q for q in queries if pools.get(q)]
    docids = list(dict.fromkeys(d for q in qids for d in pools[q]))
    q_row = {q: i for i, q in enumerate(qids)}
    d_row = {d: i for i, d in enumerate(docids)}
    pairs = [(q, d) for q in qids for d in dict.fromkeys(pools[q])]
    teacher = LLMReranker(
        retriever.model, retriever.tokenizer, retriever.template, retriever.max_doc_tokens,
        bf16=retriever.bf16,
    )  # fmt: skip
    log.info(
        "caching teacher outputs: %d queries, %d docs, %d pairs", *map(len, (qids, docids, pairs))
    )
    states = teacher.forward_pair_states(
        [(corpus[d], queries[q]) for q, d in pairs], batch_size=batch_size, top_k=top_k
    )
    doc_embs, doc_tokens = retriever.encode_corpus([corpus[d] for d in docids], batch_size)
    teacher_pairs = TeacherPairs.from_pair_states(
        [q_row[q] for q, _ in pairs], [d_row[d] for _, d in pairs], states
    )
    return JepaTrainingData.encoded(retriever, [queries[q] for q in qids], qids, docids,
                                    doc_embs, doc_tokens, teacher_pairs, batch_size)  # fmt: skip


__all__ = ["JepaTrainingData", "TeacherPairs", "build_training_data"]

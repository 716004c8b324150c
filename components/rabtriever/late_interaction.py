"""Late interaction between the token states of a query and of a document, each encoded alone.

Rabtriever's `maxsim` predictor reads the document latent as a set of token states (ColBERT's
multi-vector representation) next to the pooled vector, and conditions the query on a few
statistics of the two token sets. For each layer L of `layers`:

    MaxSim_L(q, d)     = 1/|q| * sum_i max_j cos(q_i^L, d_j^L)
    MaxSim_L^idf(q, d) = sum_i idf(t_i) * max_j cos(q_i^L, d_j^L) / sum_i idf(t_i)
    idf(t)             = ln((N + 1) / (df(t) + 0.5))     (df over the N documents it was fit on)

plus the cosine of the two pooled vectors. q_i^L is the state of the query's i-th token at
decoder layer L when the query is read through the document prompt (the context the document
tokens had; the pass stops at the deepest layer used), t_i its token id. The document's token
states may come from a longer cut of it than the teacher reads
(`rabtriever.maxsim_doc_tokens`): each document is encoded alone, at a cost linear in its
length, and on SciFact, where 99% of the abstracts are longer than the teacher's 128 tokens,
reading up to 512 orders the candidates better (docs/studies.md, `maxsim_doc_length_study.py`).
The query's pooled vector is the mean final state of its own segment ("{query_label}: {query}")
of the query prompt, which the pass for its answer state computes anyway. Layer 0 is the token
embedding: nothing is stored for it, the states are looked up from the token ids.

Why: a probe of the frozen teacher (docs/studies.md, `probe_frozen_features.py`)
found that token-by-token comparison of lower-layer states orders candidates far better than any
single pooled vector, and a predictor trained on pooled vectors alone could not learn that from a
few hundred teacher pairs.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TOKEN_IDS_FILE = "doc_token_ids.npy"
TOKEN_META_FILE = "doc_tokens.json"


def states_file(layer: int) -> str:
    return f"doc_token_states_L{layer}.npy"


def num_features(layers: Sequence[int]) -> int:
    """MaxSim and IDF-weighted MaxSim per layer, plus the pooled cosine."""
    return 2 * len(layers) + 1


@dataclass
class TokenStates:
    """Token ids and unit-norm token states of N texts, right-padded to one width T.

    token_ids [N, T] long, -1 on padding; states: layer (> 0) -> [N, T, H] fp16, 0 on padding.
    """

    token_ids: torch.Tensor
    states: dict[int, torch.Tensor]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def mask(self) -> torch.Tensor:
        return self.token_ids >= 0

    @classmethod
    def from_rows(
        cls, token_ids: Sequence[Sequence[int]], states: dict[int, Sequence[torch.Tensor]]
    ) -> TokenStates:
        """From per-text lists (ids [T_i], states [T_i, H]); normalises and pads."""
        width = max((len(row) for row in token_ids), default=0)
        ids = torch.full((len(token_ids), width), -1, dtype=torch.long)
        for i, row in enumerate(token_ids):
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        padded = {}
        for layer, rows in states.items():
            hidden = rows[0].shape[-1] if rows else 0
            out = torch.zeros(len(rows), width, hidden, dtype=torch.float16)
            for i, row in enumerate(rows):
                out[i, : len(row)] = F.normalize(row.float(), dim=-1).to(torch.float16)
            padded[layer] = out
        return cls(ids, padded)

    def select(self, rows: Sequence[int] | torch.Tensor, trim: bool = False) -> TokenStates:
        """These rows; `trim`: without the padding columns none of them uses (only their
        width is copied, which matters in a scan of an index padded to its longest text)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = self.token_ids.shape[1]
        if trim and len(rows):
            width = int(self.mask[rows].sum(1).max())
        states = {layer: values[rows, :width] for layer, values in self.states.items()}
        return TokenStates(self.token_ids[rows, :width], states)

    @classmethod
    def concat(cls, parts: Sequence[TokenStates]) -> TokenStates:
        width = max(p.token_ids.shape[1] for p in parts)

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            extra = width - t.shape[1]
            return F.pad(t, (0, 0, 0, extra) if t.dim() == 3 else (0, extra), value=value)

        layers = parts[0].states.keys()
        return cls(
            torch.cat([pad(p.token_ids, -1) for p in parts]),
            {k: torch.cat([pad(p.states[k], 0.0) for p in parts]) for k in layers},
        )

    def save(self, folder: Path) -> None:
        """Token ids padded [N, T]; each layer's states packed [tokens, H] without the padding
        (documents of very different lengths would otherwise store mostly zeros)."""
        np.save(folder / TOKEN_IDS_FILE, self.token_ids.numpy().astype(np.int32))
        mask = self.mask
        for layer, states in self.states.items():
            np.save(folder / states_file(layer), states[mask].numpy())
        (folder / TOKEN_META_FILE).write_text(json.dumps({"layers": sorted(self.states)}))

    @classmethod
    def load(cls, folder: Path) -> TokenStates:
        layers = json.loads((folder / TOKEN_META_FILE).read_text())["layers"]
        ids = torch.from_numpy(np.load(folder / TOKEN_IDS_FILE).astype(np.int64))
        mask = ids >= 0
        states = {}
        for layer in layers:
            stored = torch.from_numpy(np.load(folder / states_file(layer)))
            if stored.dim() == 2:  # packed: scatter back into the padded layout
                padded = torch.zeros(*ids.shape, stored.shape[-1], dtype=stored.dtype)
                padded[mask] = stored
                stored = padded
            states[int(layer)] = stored
        return cls(ids, states)

    @staticmethod
    def exists(folder: Path) -> bool:
        return (folder / TOKEN_META_FILE).exists()


def fit_idf(token_ids: Iterable[Sequence[int]], vocab_size: int) -> torch.Tensor:
    """[V] idf(t) = ln((N + 1) / (df(t) + 0.5)) over the given documents' token ids."""
    df: Counter[int] = Counter()
    n = 0
    for row in token_ids:
        df.update({int(t) for t in row if int(t) >= 0})
        n += 1
    idf = torch.full((vocab_size,), math.log((n + 1) / 0.5))
    for token, count in df.items():
        idf[token] = math.log((n + 1) / (count + 0.5))
    return idf


def _unit_embeddings(embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Unit-norm input embeddings of `ids` (any shape) on the embedding's device, fp32."""
    return F.normalize(embedding(ids.clamp(min=0).to(embedding.weight.device)).float(), dim=-1)


def scans_vocabulary(docs: TokenStates, layers: Sequence[int], embedding: nn.Embedding) -> bool:
    """Whether layer 0 is cheaper against the whole vocabulary (one [|q|, V] product, then a
    gather) than per document token: a corpus scan, more document tokens than the vocabulary."""
    return 0 in layers and docs.token_ids.numel() > embedding.num_embeddings


def unit_vocabulary(embedding: nn.Embedding) -> torch.Tensor:
    """[V, H] fp32 unit-norm token embeddings: layer 0 of a corpus scan."""
    return F.normalize(embedding.weight.float(), dim=-1)


def _best_matches(
    query: TokenStates,
    q_keep: torch.Tensor,
    docs: TokenStates,
    layer: int,
    embedding: nn.Embedding,
    vocab_sim: torch.Tensor | None,
) -> torch.Tensor:
    """[n, |q|]: each query token's best cosine over each document's tokens at `layer`.

    Layer 0 with `vocab_sim` ([|q|, V] cosines of the query tokens to the whole vocabulary):
    a gather, instead of looking up and normalising an embedding per document token.
    """
    device = embedding.weight.device
    mask = docs.mask.to(device)
    if layer == 0:
        doc_ids = docs.token_ids.clamp(min=0).to(device)
        if vocab_sim is not None:
            sim = vocab_sim[:, doc_ids].permute(1, 0, 2)  # [n, |q|, T]
        else:
            q_states = _unit_embeddings(embedding, query.token_ids[0, q_keep])
            sim = torch.einsum("qh,nth->nqt", q_states, _unit_embeddings(embedding, doc_ids))
    else:
        q_states = query.states[layer][0, q_keep].to(device).float()
        sim = torch.einsum("qh,nth->nqt", q_states, docs.states[layer].to(device).float())
    return sim.masked_fill(~mask[:, None, :], -2.0).max(-1).values


@torch.no_grad()
def maxsim_features(
    query: TokenStates,
    docs: TokenStates,
    query_pooled: torch.Tensor,
    doc_pooled: torch.Tensor,
    idf: torch.Tensor,
    layers: Sequence[int],
    embedding: nn.Embedding,
    chunk: int = 256,
    unit_vocab: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, 2 * len(layers) + 1] features of one query (`query` has one row) against N docs.

    Column order: per layer MaxSim, MaxSim^idf; then the pooled cosine (see the module
    docstring). Documents are processed `chunk` at a time to bound memory in a corpus scan.
    `unit_vocab`: the unit-norm embedding table [V, H], if the caller keeps one (`unit_vocab`);
    a corpus scan needs it and would otherwise normalise the whole table per query.
    """
    if len(query) != 1:
        raise ValueError(f"one query at a time, got {len(query)}")
    out = torch.zeros(len(docs), num_features(layers))
    q_keep = query.mask[0]
    if not q_keep.any():  # an empty query matches nothing
        return out
    device = embedding.weight.device
    ids = query.token_ids[0, q_keep].to(device)
    weights = idf.to(device, torch.float32)[ids].clamp(min=0)
    weights = weights / weights.sum().clamp(min=1e-9)
    query_pooled, doc_pooled = query_pooled.to(device), doc_pooled.to(device)
    vocab_sim = None
    if scans_vocabulary(docs, layers, embedding):
        vocab = unit_vocab if unit_vocab is not None else unit_vocabulary(embedding)
        vocab_sim = _unit_embeddings(embedding, query.token_ids[0, q_keep]) @ vocab.T
    # Shortest documents first, each chunk trimmed to its own longest: a scan then pads only
    # to similar lengths, not every chunk to the index's longest document.
    order = torch.argsort(docs.mask.sum(1), stable=True)
    for start in range(0, len(docs), chunk):
        rows = order[start : start + chunk]
        part = docs.select(rows, trim=True)
        columns = []
        for layer in layers:
            best = _best_matches(query, q_keep, part, layer, embedding, vocab_sim)  # [n, |q|]
            columns += [best.mean(-1), best @ weights]
        cosine = F.cosine_similarity(query_pooled.reshape(1, -1), doc_pooled[rows.to(device)])
        out[rows] = torch.stack([*columns, cosine], dim=-1).float().cpu()
    return out


__all__ = [
    "TokenStates",
    "fit_idf",
    "maxsim_features",
    "num_features",
    "scans_vocabulary",
    "states_file",
    "unit_vocabulary",
]

"""Cross-attention from the query state to the document's token states (the document latent).

The `attention` predictor's reading of a document: the query's answer-position state attends
over the document's own token states, encoded alone and offline (`TokenStates`, unit-norm, at
one decoder layer). Standard multi-head attention with one query vector,

    head h:  softmax((W_q,h q) . (W_k,h D)^T / sqrt(d_h)) (W_v,h D)

computed with the key and value maps folded onto the query side and the output:

    scores_h = D (W_k,h^T W_q,h q) / sqrt(d_h)        context_h = softmax(scores_h) D
    out_h    = W_v,h context_h

which is the same function (no key/value biases) at a cost of 2 * heads * T * H per document
instead of 2 * T * H * heads * d_h: a document's T token states are never projected, so a
training step or a corpus scan costs a few dot products per stored token, and the stored
states need no recomputation when the weights change.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LatentAttention(nn.Module):
    """query [B, H], latent [B, T, H] with mask [B, T] (True on real tokens) -> [B, heads * d]."""

    def __init__(self, hidden_size: int, heads: int, head_dim: int):
        super().__init__()
        if heads < 1 or head_dim < 1:
            raise ValueError(f"heads and head_dim must be >= 1, got {heads}, {head_dim}")
        self.heads, self.head_dim = heads, head_dim
        self.query = nn.Linear(hidden_size, heads * head_dim)
        self.key = nn.Linear(hidden_size, heads * head_dim, bias=False)
        self.value = nn.Linear(hidden_size, heads * head_dim, bias=False)

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def forward(
        self, query: torch.Tensor, latent: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        heads, dim = self.heads, self.head_dim
        hidden = latent.shape[-1]
        latent = latent.to(query.dtype)
        query = query.expand(len(latent), -1)  # one query state may score many documents
        q = self.query(query).view(-1, heads, 1, dim)  # [B, h, 1, d]
        # Fold W_k onto the query: (W_k q)^T-side product in the latent's own space.
        folded = (q @ self.key.weight.view(heads, dim, hidden)).squeeze(2)  # [B, h, H]
        scores = torch.einsum("bhe,bte->bht", folded, latent) / math.sqrt(dim)
        keep = mask[:, None, :].to(scores.device)
        # The dtype's minimum, not -inf: a document with no tokens gets zero weights and a
        # finite gradient (softmax over all -inf would be NaN both ways).
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * keep
        context = torch.einsum("bht,bte->bhe", weights, latent)  # [B, h, H]
        out = torch.einsum("bhe,hde->bhd", context, self.value.weight.view(heads, dim, hidden))
        return out.reshape(len(query), heads * dim)


__all__ = ["LatentAttention"]

"""Contrastive (InfoNCE) loss of a bi-encoder with in-batch and hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(queries: torch.Tensor, documents: torch.Tensor, positives: torch.Tensor,
                     temperature: float = 0.05) -> torch.Tensor:
    """Mean over queries of -log softmax(sim(q_i, ·) / t)[positive of q_i].

    What it computes:
        Every query is scored against every document of the batch: its own positive, its own
        hard negatives (BM25 hits that are not relevant) and every other query's positive and
        negatives (in-batch negatives). The loss is low when each query's positive has the
        highest similarity by a margin.

    Equation:
        L = -1/B * sum_i log( exp(s(q_i, d_{p(i)}) / t) / sum_{j=1..D} exp(s(q_i, d_j) / t) )
        with s(q, d) = q . d (the embeddings are L2-normalised, so s is the cosine)

    Inputs and shapes:
        queries:   [B, H] L2-normalised query embeddings.
        documents: [D, H] L2-normalised document embeddings of the whole batch.
        positives: [B] long, row of each query's positive in `documents`.
        returns: scalar tensor. Computed in fp32.

    Reference:
        van den Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
        with BM25 hard negatives as in DPR (Karpukhin et al., EMNLP 2020) and RepLLaMA (Ma et
        al., "Fine-Tuning LLaMA for Multi-Stage Text Retrieval", SIGIR 2024).
    """
    if queries.dim() != 2 or documents.dim() != 2 or queries.shape[1] != documents.shape[1]:
        raise ValueError(f"expected [B, H] and [D, H], got {tuple(queries.shape)} and "
                         f"{tuple(documents.shape)}")
    if positives.shape != (queries.shape[0],):
        raise ValueError(f"positives must be [B]={queries.shape[0]}, got {tuple(positives.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = queries.float() @ documents.float().T / temperature
    return F.cross_entropy(logits, positives)

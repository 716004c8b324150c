"""Listwise softmax cross-entropy over groups of one positive and n negatives."""

from __future__ import annotations

import torch
from torch import nn


def listwise_ce(
    scores: torch.Tensor, temperature: float = 1.0, positive_index: int = 0
) -> torch.Tensor:
    """Mean over groups of -log softmax(scores / temperature)[positive_index].

    What it computes:
        For each group (one query, its positive document and n negatives), the cross-entropy of a
        softmax over the group's scores with the positive as the target class: the loss is low
        when the positive scores highest by a margin. Negatives within a group compete only with
        each other and their positive, never with other groups (no in-batch negatives).

    Equation:
        L = -1/B * sum_b log( exp(s_{b,p} / t) / sum_{j=0..n} exp(s_{b,j} / t) )
        with p = positive_index

    Inputs and shapes:
        scores: [B, 1 + n] float, one row per group, the positive at column `positive_index`
                (0 in this project: `TrainingGroup` puts it first). Computed in fp32 whatever the
                input dtype, as a bf16 log-sum-exp is too coarse for small margins.
        returns: scalar tensor (mean over the B groups).

    Reference:
        Listwise softmax loss: Cao et al., "Learning to Rank: From Pairwise Approach to Listwise
        Approach" (ListNet, ICML 2007). The 1-positive + hard-BM25-negatives form for rerankers:
        Gao, Dai & Callan, "Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline"
        (Localized Contrastive Estimation, ECIR 2021).

    Temperature convention:
        Scores are DIVIDED by `temperature` (t=1 uses raw scores; t<1 sharpens the softmax). The
        teacher's scores are already log-odds log p(Yes) - log p(No), so t=1 is the default.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [groups, 1 + negatives], got {tuple(scores.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    log_probs = torch.log_softmax(scores.float() / temperature, dim=-1)
    return -log_probs[:, positive_index].mean()


class ListwiseCELoss(nn.Module):
    """Module form of `listwise_ce` (same equation, shapes and temperature convention)."""

    def __init__(self, temperature: float = 1.0, positive_index: int = 0):
        super().__init__()
        self.temperature = temperature
        self.positive_index = positive_index

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return listwise_ce(scores, self.temperature, self.positive_index)

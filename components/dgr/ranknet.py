"""Distilled RankNet, logistic form: this project's pairwise loss that makes a student respect a
teacher's order (DGR's released hinge form is `components.dgr.hinge_ranknet`)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

PairWeighting = Literal["reciprocal_sum", "delta", "uniform"]


def pair_weights(m: int, weighting: PairWeighting = "reciprocal_sum", device=None) -> torch.Tensor:
    """[m, m] weights w_ij for the pairs i < j (zero on and below the diagonal).

    "reciprocal_sum": w_ij = 1/(i+1) + 1/(j+1)  (pairs that involve a top passage count more;
               this project's choice: DGR's released loss is the hinge in `hinge_ranknet`)
    "delta":   w_ij = |1/(i+1) - 1/(j+1)|  (LambdaRank-like: the reciprocal-rank change a swap
               of i and j would cause; adjacent pairs deep in the list count little)
    "uniform": w_ij = 1                    (plain RankNet)
    """
    inv = 1.0 / torch.arange(1, m + 1, dtype=torch.float32, device=device)
    if weighting == "reciprocal_sum":
        weights = inv[:, None] + inv[None, :]
    elif weighting == "delta":
        weights = (inv[:, None] - inv[None, :]).abs()
    elif weighting == "uniform":
        weights = torch.ones(m, m, device=device)
    else:
        raise ValueError(f"weighting must be reciprocal_sum, delta or uniform, got {weighting!r}")
    return torch.triu(weights, diagonal=1)


def as_lists(scores: torch.Tensor, mask: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores (and mask) as [lists, m], fp32: a single list [m] becomes one row."""
    if scores.dim() == 1:
        scores = scores.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    if scores.dim() != 2:
        raise ValueError(f"scores must be [lists, m] or [m], got {tuple(scores.shape)}")
    return scores.float(), mask


def distilled_ranknet(
    scores: torch.Tensor,
    temperature: float = 1.0,
    margin: float = 0.0,
    weighting: PairWeighting = "reciprocal_sum",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted pairwise logistic loss over the teacher's order, averaged over lists.

    What it computes:
        The student's scores for m passages arrive in the teacher's order (index 0 = the
        teacher's best). Every pair (i, j) with i < j is a preference "i above j"; the loss is the
        logistic (RankNet) loss of that preference on the student's score difference, weighted by
        the two ranks, normalised by the weight sum so lists of any length give losses on one
        scale. Only the order is distilled, never the teacher's score values, so any run (an LLM
        reranker, BM25, a dense retriever) can act as teacher.

    Equation (per list):
        L = sum_{i<j} w_ij * softplus(-(s_i - s_j - margin) / T)  /  sum_{i<j} w_ij
        softplus(x) = log(1 + exp(x)), computed stably: finite and with finite gradients for any
        score gap. Lists are averaged with equal weight.

    Inputs and shapes:
        scores: [B, m] or [m] float, row b in the teacher's order (column 0 best). For DGR these
                are the student's identifier log-probabilities. Computed in fp32.
        mask:   optional [B, m] bool, False for padding columns (lists shorter than m); a pair
                counts only when both ends are real.
        returns: scalar tensor. Lists with fewer than 2 real passages contribute 0 (and no
                gradient); a batch with no pair at all returns a zero that still has a graph.

    Reference:
        Burges et al., "Learning to Rank using Gradient Descent" (RankNet, ICML 2005), the
        logistic pairwise loss; Li et al., "Distillation Enhanced Generative Retrieval" (DGR,
        Findings of ACL 2024) distil a reranker's rank list into a generative retriever with a
        pairwise loss, but their released code uses a hinge with rank-dependent margins
        (`components.dgr.hinge_ranknet.released_ranknet`). This logistic form and its rank
        weights 1/(i+1) + 1/(j+1) are this project's, not the paper's.

    Temperature convention:
        Score differences are DIVIDED by `temperature` after the margin is subtracted (T=1: raw
        log-probability gaps; T<1 sharpens, so smaller violations already cost more). `margin` is
        in score units: a pair stops costing much only once s_i exceeds s_j by more than it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scores, mask = as_lists(scores, mask)
    m = scores.shape[1]
    weights = pair_weights(m, weighting, scores.device).expand(scores.shape[0], m, m)
    if mask is not None:
        real = mask.bool()
        weights = weights * (real[:, :, None] & real[:, None, :])
    diff = scores[:, :, None] - scores[:, None, :]  # [B, m, m], diff[b, i, j] = s_i - s_j
    pair_loss = nn.functional.softplus(-(diff - margin) / temperature)
    weight_sum = weights.sum(dim=(1, 2))
    per_list = (weights * pair_loss).sum(dim=(1, 2)) / weight_sum.clamp_min(1e-12)
    has_pairs = weight_sum > 0
    if not has_pairs.any():
        return scores.sum() * 0.0  # keeps the graph so callers can always backward()
    return per_list[has_pairs].mean()


class DistilledRankNetLoss(nn.Module):
    """Module form of `distilled_ranknet` (same equation, shapes and temperature convention)."""

    def __init__(self, temperature: float = 1.0, margin: float = 0.0,
                 weighting: PairWeighting = "reciprocal_sum"):
        super().__init__()
        self.temperature = temperature
        self.margin = margin
        self.weighting = weighting

    def forward(
        self, scores: torch.Tensor, teacher_scores=None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # `teacher_scores` is accepted (and ignored) so every distillation loss has one call form.
        return distilled_ranknet(scores, self.temperature, self.margin, self.weighting, mask)

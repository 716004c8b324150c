"""DGR's distilled RankNet as released: a pairwise hinge with rank-dependent margins."""

from __future__ import annotations

import torch

from components.dgr.ranknet import as_lists


def released_ranknet(
    scores: torch.Tensor,
    margin: float = 300.0,
    margin_step: float = 100.0,
    first_weight: float = 3.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted pairwise hinge over the teacher's order, as DGR's released code computes it.

    What it computes:
        The student's scores for m passages arrive in the teacher's order (index 0 = the
        teacher's best). Every pair i < j must be separated by a margin that grows with their
        rank distance; a pair that is not costs its shortfall, linearly. Pairs of the first
        passage weigh `first_weight`, pairs of the passage at rank i (0-based, i > 0) weigh
        1/(i+1). The loss is the mean of the weighted costs over the pairs that cost anything
        (the released code averages the non-zero entries), over all lists of the batch at once.

    Equation:
        c_ij = max(0, s_j - s_i + margin + (j - i - 1) * margin_step)         for i < j
        w_ij = first_weight if i = 0 else 1 / (i + 1)
        L = mean over {(b, i, j): w_ij * c_ij > 0} of w_ij * c_ij              (0 if none)

    Inputs and shapes:
        scores: [B, m] or [m] float, row b in the teacher's order (column 0 best). For DGR these
                are the student's identifier log-probabilities. Computed in fp32.
        mask:   optional [B, m] bool, False for padding columns; a pair counts only when both
                ends are real.
        returns: scalar tensor (a zero with a graph when no pair costs anything).

    Reference:
        Li et al., "Distillation Enhanced Generative Retrieval" (Findings of ACL 2024); the
        released code, liyongqi67/MINDER `seal/minder_ltr_listwise_seal.py` (`manual_rankNet`:
        `n = 100.`, `first_row_weight = 3.`, `--rank_margin` default 300, and the generation loss
        weighted `--factor_of_generation_loss` 1000 against the rank loss's 1). The defaults
        here are those values; they were set for MINDER's aggregated n-gram scores, which run
        in the hundreds, so on log-probabilities of one identifier every pair costs something
        and the loss acts as a weighted linear pairwise loss.

    Temperature convention:
        None: score differences are used as they are; `margin` and `margin_step` are in score
        units.
    """
    scores, mask = as_lists(scores, mask)
    m = scores.shape[1]
    rank = torch.arange(m, device=scores.device)
    i, j = rank[:, None], rank[None, :]
    pairs = (i < j).expand(scores.shape[0], m, m)
    if mask is not None:
        real = mask.bool()
        pairs = pairs & real[:, :, None] & real[:, None, :]
    required = margin + (j - i - 1).clamp_min(0).float() * margin_step
    cost = (scores[:, None, :] - scores[:, :, None] + required).clamp_min(0)  # [B, i, j]
    row_weight = torch.where(rank == 0, torch.tensor(first_weight, device=scores.device),
                             1.0 / (rank + 1).float())
    weighted = cost * row_weight[None, :, None] * pairs
    active = weighted > 0
    if not active.any():
        return scores.sum() * 0.0  # keeps the graph so callers can always backward()
    return weighted[active].mean()

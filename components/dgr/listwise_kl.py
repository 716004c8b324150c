"""Listwise KL distillation: match the student's softmax over a list to the teacher's."""

from __future__ import annotations

import torch
from torch import nn

_MASKED = -1e9


def listwise_kl(
    scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    temperature: float = 1.0,
    teacher_temperature: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over lists of KL(softmax(t / T_t) || softmax(s / T)).

    What it computes:
        Both score vectors of a list (the same m passages, any order) become distributions by a
        softmax; the loss is the KL divergence from the teacher's distribution to the student's.
        Unlike RankNet it distils the teacher's score *gaps*, not only its order, so it needs
        calibrated-ish teacher scores (an LLM reranker's log-odds; BM25 scores want a smaller
        teacher temperature or RankNet instead).

    Equation (per list):
        p = softmax(t / T_t),  q = softmax(s / T)
        L = sum_i p_i * (log p_i - log q_i)
        No T^2 factor (Hinton et al. scale by T^2 to keep gradient size across T; here T is a
        tuned hyperparameter, so the plain form keeps the loss readable as a divergence).

    Inputs and shapes:
        scores:         [B, m] or [m] float, the student's scores.
        teacher_scores: same shape, the teacher's scores for the same passages.
        mask:           optional [B, m] bool, False for padding columns (excluded from both
                        softmaxes). Lists with < 2 real passages have KL 0.
        returns: scalar tensor (mean over lists), computed in fp32.

    Reference:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015); listwise
        form as in Cao et al., ListNet (ICML 2007). Used as the alternative to the distilled
        RankNet of Li et al., "Distillation Enhanced Generative Retrieval" (DGR, 2024).

    Temperature convention:
        Scores are DIVIDED by the temperature; `teacher_temperature` defaults to `temperature`
        (one T on both sides, as in the usual KD form). T > 1 flattens both distributions.
    """
    teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
    if temperature <= 0 or teacher_temperature <= 0:
        raise ValueError("temperatures must be > 0")
    if scores.shape != teacher_scores.shape:
        raise ValueError(f"shape mismatch: {tuple(scores.shape)} vs {tuple(teacher_scores.shape)}")
    if scores.dim() == 1:
        scores, teacher_scores = scores.unsqueeze(0), teacher_scores.unsqueeze(0)
        mask = None if mask is None else mask.unsqueeze(0)
    student = scores.float() / temperature
    teacher = teacher_scores.float().to(student.device) / teacher_temperature
    if mask is not None:
        real = mask.bool().to(student.device)
        # A large finite fill instead of -inf: its softmax mass is exactly 0 in fp32, and no
        # 0 * (-inf - -inf) = NaN can appear in the value or the gradient (also for a list
        # with every column masked).
        student = student.masked_fill(~real, _MASKED)
        teacher = teacher.masked_fill(~real, _MASKED)
    log_q = torch.log_softmax(student, dim=-1)
    log_p = torch.log_softmax(teacher, dim=-1)
    terms = log_p.exp() * (log_p - log_q)
    if mask is not None:
        terms = torch.where(real, terms, torch.zeros_like(terms))
    return terms.sum(dim=-1).mean()


class ListwiseKLLoss(nn.Module):
    """Module form of `listwise_kl` (same equation, shapes and temperature convention)."""

    def __init__(self, temperature: float = 1.0, teacher_temperature: float | None = None):
        super().__init__()
        self.temperature = temperature
        self.teacher_temperature = teacher_temperature

    def forward(
        self, scores: torch.Tensor, teacher_scores: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return listwise_kl(scores, teacher_scores, self.temperature, self.teacher_temperature, mask)

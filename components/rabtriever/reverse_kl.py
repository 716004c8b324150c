"""Reverse KL KL(student || teacher) between next-token distributions at the answer position."""

from __future__ import annotations

import torch
from torch import nn


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_ids: torch.Tensor | None = None,
    top_k: int = 0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean over rows of KL(p_s || p_t), the teacher detached, on the full vocab or a top-k support.

    What it computes:
        The mode-seeking divergence of the student's answer distribution from the teacher's:
        it is large where the student puts mass the teacher does not, so the student is pushed
        off its own mistakes rather than asked to cover every teacher mode (forward KL). With a
        support (the teacher's top-k tokens), both distributions are renormalised over it: the
        answer tokens (Yes/No) dominate that mass, and a k-token support is what can be cached
        per pair (a full 49k-vocab row per pair cannot).

    Equation:
        S = full vocabulary, or the teacher's k highest-logit tokens per row
        p_s = softmax_S(z_s / tau),  p_t = softmax_S(z_t / tau)       (normalised over S)
        L = tau^2 * 1/B * sum_b sum_{v in S} p_s[b,v] (log p_s[b,v] - log p_t[b,v])

    Inputs and shapes:
        student_logits: [B, V] float, full-vocabulary logits at the answer position (with grad).
        teacher_logits: [B, V] full-vocabulary logits, or [B, k] values at `teacher_ids`.
        teacher_ids:    None (teacher_logits is full vocab) or [B, k] long vocab ids, e.g. the
                        `topk_ids` of `LLMReranker.forward_pair_states(..., top_k=k)`.
        top_k:          0 = whole support given (full vocab, or all k cached ids); k > 0 = the
                        teacher's top-k of what was given (must not exceed what was cached).
        returns:        scalar tensor, fp32. Zero when student and teacher logits agree on S
                        (up to a constant shift).

    Reference:
        Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models" (ICLR 2024);
        Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
        Mistakes" (GKD, ICLR 2024), where reverse KL is paired with on-policy samples.

    Temperature convention:
        Both logit sets are DIVIDED by `temperature` and the KL is multiplied by temperature^2
        (Hinton et al. 2015). tau=1 (default) distils the distributions the scores are read from.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError("student and teacher logits must be [B, V] / [B, k]")
    student, teacher = student_logits.float(), teacher_logits.detach().float()
    if teacher_ids is None:
        if teacher.shape != student.shape:
            raise ValueError(f"full-vocab teacher {teacher.shape} != student {student.shape}")
        if top_k > 0:
            teacher, teacher_ids = teacher.topk(min(top_k, teacher.shape[1]), dim=-1)
    else:
        if teacher_ids.shape != teacher.shape:
            raise ValueError(f"teacher ids {teacher_ids.shape} != values {teacher.shape}")
        if top_k > teacher.shape[1]:
            raise ValueError(f"top_k={top_k} exceeds the {teacher.shape[1]} cached teacher tokens")
        if 0 < top_k < teacher.shape[1]:
            values, order = teacher.topk(top_k, dim=-1)
            teacher, teacher_ids = values, teacher_ids.gather(1, order)
    if teacher_ids is not None:
        student = student.gather(1, teacher_ids.long())
    log_p_s = torch.log_softmax(student / temperature, dim=-1)
    log_p_t = torch.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)
    return kl.mean() * temperature**2


class ReverseKLLoss(nn.Module):
    """Module form of `reverse_kl` (same equation, shapes and temperature convention)."""

    def __init__(self, top_k: int = 0, temperature: float = 1.0):
        super().__init__()
        self.top_k, self.temperature = top_k, temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return reverse_kl(student_logits, teacher_logits, teacher_ids, self.top_k, self.temperature)

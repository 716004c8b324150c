"""JEPA latent-prediction loss: predicted vs teacher context-aware query states."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

JEPA_FORMS = ("kl", "smooth_l1")
NORMALIZATIONS = ("layer", "l2")


def jepa_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    form: str = "kl",
    temperature: float = 1.0,
    normalize: str = "layer",
    beta: float = 1.0,
) -> torch.Tensor:
    """Mean over rows of a distance between predicted and target latent vectors.

    What it computes:
        How far the student's predicted answer-position state (the query state after the
        predictor has "read" the document embedding) is from the teacher's actual state with the
        document in its prompt. The target is a constant (detached): the teacher is frozen, so
        there is no collapse to guard against, unlike JEPA with a learned target encoder.
        Rabtriever passes both vectors AFTER the LLM's final norm (what the LM head consumes).

    Equation:
        form="kl" (distribution over the H hidden units, as in DINO-style feature distillation):
            L = tau^2 * 1/B * sum_b sum_h p_t[b,h] (log p_t[b,h] - log p_s[b,h]),
            p_t = softmax(target / tau),  p_s = softmax(pred / tau)    (i.e. KL(p_t || p_s))
        form="smooth_l1" (data2vec's regression loss), on normalised vectors n(.):
            L = 1/(B*H) * sum_{b,h} smoothL1_beta(n(pred)[b,h] - n(target)[b,h]),
            smoothL1_beta(x) = 0.5 x^2 / beta if |x| < beta else |x| - 0.5 beta
            n = layer norm without affine (normalize="layer") or x / ||x||_2 (normalize="l2").

    Inputs and shapes:
        pred:   [B, H] float, the student's prediction (gradients flow through it).
        target: [B, H] float, the teacher's state (detached here).
        returns: scalar tensor, computed in fp32. Zero when pred == target.

    Reference:
        Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
        Architecture" (I-JEPA, CVPR 2023): predict a target's latent, not its pixels/tokens.
        Huang, LeCun & Balestriero, "LLM-JEPA: Large Language Models Meet Joint Embedding
        Predictive Architectures" (2025). Smooth L1 on layer-normalised targets: Baevski et al.,
        "data2vec" (ICML 2022). Feature-KL with temperature: Caron et al., DINO (ICCV 2021).

    Temperature convention:
        form="kl": both vectors are DIVIDED by `temperature` before the softmax and the KL is
        multiplied by temperature^2 (Hinton et al. 2015), so gradient magnitudes stay comparable
        across temperatures. Post-norm states have entries of order 1-10, so tau in [1, 4] keeps
        the softmax from being a one-hot on the largest unit. form="smooth_l1" has no temperature;
        `beta` is the L2-to-L1 switch point.
    """
    if pred.shape != target.shape or pred.dim() != 2:
        raise ValueError(f"pred and target must both be [B, H], got {pred.shape}, {target.shape}")
    pred, target = pred.float(), target.detach().float()
    if form == "kl":
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        log_p_s = torch.log_softmax(pred / temperature, dim=-1)
        log_p_t = torch.log_softmax(target / temperature, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return kl.mean() * temperature**2
    if form == "smooth_l1":
        return F.smooth_l1_loss(
            _normalize(pred, normalize), _normalize(target, normalize), beta=beta
        )
    raise ValueError(f"form must be one of {JEPA_FORMS}, got {form!r}")


def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "layer":
        return F.layer_norm(x, x.shape[-1:])
    if how == "l2":
        return F.normalize(x, dim=-1)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {how!r}")


class JepaLoss(nn.Module):
    """Module form of `jepa_loss` (same equation, shapes and temperature convention)."""

    def __init__(
        self,
        form: str = "kl",
        temperature: float = 1.0,
        normalize: str = "layer",
        beta: float = 1.0,
    ):
        super().__init__()
        self.form, self.temperature, self.normalize, self.beta = form, temperature, normalize, beta

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return jepa_loss(pred, target, self.form, self.temperature, self.normalize, self.beta)

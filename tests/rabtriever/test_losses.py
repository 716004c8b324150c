"""JEPA and reverse-KL losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from components.rabtriever.jepa_loss import JepaLoss, jepa_loss
from components.rabtriever.reverse_kl import ReverseKLLoss, reverse_kl

LN3 = math.log(3.0)


# -- JEPA -------------------------------------------------------------------------------------


def test_jepa_kl_hand_computed():
    # p_t = softmax([ln 3, 0]) = [3/4, 1/4]; p_s = softmax([0, 0]) = [1/2, 1/2]
    pred, target = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert jepa_loss(pred, target, "kl").item() == pytest.approx(expected, abs=1e-6)
    # tau = 2: softmax of halved vectors, times tau^2. p_t = [sqrt3, 1] / (sqrt3 + 1)
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (a * math.log(a / 0.5) + (1 - a) * math.log((1 - a) / 0.5))
    assert jepa_loss(pred, target, "kl", temperature=2.0).item() == pytest.approx(
        expected_t2, abs=1e-6
    )
    # Forward KL(p_t || p_s): swapping the arguments gives a different number.
    assert jepa_loss(target, pred, "kl").item() != pytest.approx(expected, abs=1e-3)


def test_jepa_smooth_l1_hand_computed_on_l2_normalised_vectors():
    # n(pred) = [0.6, 0.8], n(target) = [1, 0]; differences -0.4, 0.8
    pred, target = torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 0.0]])
    loss = jepa_loss(pred, target, "smooth_l1", normalize="l2", beta=1.0)
    assert loss.item() == pytest.approx((0.5 * 0.16 + 0.5 * 0.64) / 2, abs=1e-6)
    loss = jepa_loss(pred, target, "smooth_l1", normalize="l2", beta=0.5)
    assert loss.item() == pytest.approx((0.5 * 0.16 / 0.5 + (0.8 - 0.25)) / 2, abs=1e-6)


def test_jepa_smooth_l1_layer_norm_ignores_shift_and_scale():
    # Layer norm maps both [1, 3] and [0, 0.5] to [-1, 1]; [3, 1] to [1, -1].
    same = jepa_loss(torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0, 3.0]]), "smooth_l1")
    assert same.item() == pytest.approx(0.0, abs=1e-5)
    loss = jepa_loss(torch.tensor([[3.0, 1.0]]), torch.tensor([[1.0, 3.0]]), "smooth_l1")
    assert loss.item() == pytest.approx(2 - 0.5, abs=1e-3)  # |diff| = 2 per unit, beta = 1


@pytest.mark.parametrize("form", ["kl", "smooth_l1"])
def test_jepa_zero_when_prediction_equals_target_and_target_detached(form):
    x = torch.randn(4, 8)
    assert jepa_loss(x, x.clone(), form).item() == pytest.approx(0.0, abs=1e-6)
    pred, target = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    JepaLoss(form, temperature=2.0)(pred, target).backward()
    assert pred.grad is not None and target.grad is None


def test_jepa_rejects_bad_arguments():
    with pytest.raises(ValueError, match="form"):
        jepa_loss(torch.zeros(1, 2), torch.zeros(1, 2), "cosine")
    with pytest.raises(ValueError, match="shape|\\[B, H\\]"):
        jepa_loss(torch.zeros(1, 2), torch.zeros(1, 3))


# -- reverse KL -------------------------------------------------------------------------------

# p_s = [1/2, 1/2], p_t = [3/4, 1/4]: KL(p_s || p_t) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
REVERSE = 0.5 * math.log(4 / 3)
FORWARD = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def test_reverse_kl_full_vocab_hand_computed():
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])
    assert reverse_kl(student, teacher).item() == pytest.approx(REVERSE, abs=1e-6)
    assert REVERSE != pytest.approx(FORWARD, abs=1e-3)  # the direction matters
    # tau = 2: p_t = [sqrt3, 1] / (sqrt3 + 1), p_s uniform, times 4
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    expected = 4 * (0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / (1 - a)))
    assert reverse_kl(student, teacher, temperature=2.0).item() == pytest.approx(expected, 1e-6)


def test_reverse_kl_on_the_teachers_top_k_support():
    # Tokens 2 and 3 fall outside the teacher's top-2: the student's mass there is ignored and
    # both distributions are renormalised over {0, 1}.
    student = torch.tensor([[0.0, 0.0, 5.0, 5.0]])
    teacher = torch.tensor([[LN3, 0.0, -9.0, -8.0]])
    assert reverse_kl(student, teacher, top_k=2).item() == pytest.approx(REVERSE, abs=1e-6)
    # The same support given as cached (ids, values), in any order, and cut from k=3 to 2.
    ids, values = torch.tensor([[1, 0]]), torch.tensor([[0.0, LN3]])
    assert reverse_kl(student, values, ids).item() == pytest.approx(REVERSE, abs=1e-6)
    ids3, values3 = torch.tensor([[3, 1, 0]]), torch.tensor([[-8.0, 0.0, LN3]])
    assert ReverseKLLoss(top_k=2)(student, values3, ids3).item() == pytest.approx(REVERSE, 1e-6)
    with pytest.raises(ValueError, match="exceeds"):
        reverse_kl(student, values, ids, top_k=3)


def test_reverse_kl_zero_when_equal_and_teacher_detached():
    logits = torch.randn(3, 10)
    assert reverse_kl(logits, logits + 2.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-free
    student = torch.randn(3, 10, requires_grad=True)
    teacher = torch.randn(3, 10, requires_grad=True)
    reverse_kl(student, teacher, top_k=4).backward()
    assert student.grad is not None and teacher.grad is None
    assert student.grad.abs().sum(-1).gt(0).all()

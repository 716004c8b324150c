import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from components.dgr.listwise_kl import ListwiseKLLoss, listwise_kl


def test_matches_scipy_reference():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(3, 5)) * 3, rng.normal(size=(3, 5)) * 3
    t = 1.7
    expected = np.mean(
        [entropy(softmax(tr / t), softmax(sr / t)) for sr, tr in zip(student, teacher, strict=True)]
    )
    got = listwise_kl(torch.tensor(student), torch.tensor(teacher), temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_matches_torch_kl_div_with_separate_teacher_temperature():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    reference = torch.nn.functional.kl_div(
        torch.log_softmax(s / 2.0, -1),
        torch.log_softmax(t / 0.5, -1),
        log_target=True,
        reduction="batchmean",
    )
    got = listwise_kl(s, t, temperature=2.0, teacher_temperature=0.5)
    assert got.item() == pytest.approx(reference.item(), rel=1e-5)


def test_zero_when_distributions_match_and_shift_invariant():
    t = torch.tensor([0.3, -1.0, 2.0])
    assert listwise_kl(t + 5.0, t).item() == pytest.approx(0.0, abs=1e-6)


def test_mask_equals_dropping_the_columns_and_stays_finite():
    s = torch.tensor([[1.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0]], requires_grad=True)
    t = torch.tensor([[0.5, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    loss = listwise_kl(s, t, mask=mask)
    expected = listwise_kl(s[0, :3].detach(), t[0, :3]).item() / 2  # row 2 (m = 1) has KL 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[0, 3] == 0)


def test_huge_gaps_are_finite():
    s = torch.tensor([1e6, -1e6, 0.0], requires_grad=True)
    loss = ListwiseKLLoss()(s, torch.tensor([-1e6, 1e6, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()

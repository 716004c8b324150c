"""Listwise softmax CE against hand-computed values and torch's cross_entropy."""

from __future__ import annotations

import math

import pytest
import torch

from components.teacher.loss import ListwiseCELoss, listwise_ce


def test_matches_hand_computed_value():
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    # -log(e^2 / (e^2 + e^1 + e^0)) = log(1 + e^-1 + e^-2)
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    assert listwise_ce(scores).item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.40760596, abs=1e-7)


def test_temperature_divides_scores_and_batch_is_averaged():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    t = 0.5
    rows = [
        math.log(1 + math.exp(-2) + math.exp(-4)),  # scores/t = [4, 2, 0]
        math.log(1 + math.exp(6) + math.exp(2)),  # scores/t = [0, 6, 2]
    ]
    assert listwise_ce(scores, temperature=t).item() == pytest.approx(sum(rows) / 2, rel=1e-6)
    reference = torch.nn.functional.cross_entropy(scores / t, torch.zeros(2, dtype=torch.long))
    assert ListwiseCELoss(temperature=t)(scores).item() == pytest.approx(reference.item())


def test_bf16_input_is_computed_in_fp32_and_gradient_flows():
    scores = torch.tensor([[1.0, 0.5, 0.25, 0.0]], requires_grad=True)
    loss = listwise_ce(scores.to(torch.bfloat16))
    assert loss.dtype == torch.float32
    loss.backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 1]  # raise the positive, lower negatives


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 1)])
def test_rejects_malformed_groups(bad):
    with pytest.raises(ValueError):
        listwise_ce(bad)

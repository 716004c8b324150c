import math

import pytest
import torch

from components.dgr.ranknet import DistilledRankNetLoss, distilled_ranknet, pair_weights


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_matches_hand_computed_value_on_three_scores():
    s = [1.0, 3.0, 0.0]  # teacher order: index 0 best; the student swaps 0 and 1
    w01, w02, w12 = 1 + 1 / 2, 1 + 1 / 3, 1 / 2 + 1 / 3
    expected = (
        w01 * softplus(-(s[0] - s[1]))
        + w02 * softplus(-(s[0] - s[2]))
        + w12 * softplus(-(s[1] - s[2]))
    ) / (w01 + w02 + w12)
    got = distilled_ranknet(torch.tensor(s))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_margin_and_temperature_follow_the_documented_convention():
    s, margin, t = [1.0, 3.0, 0.0], 0.5, 2.0
    pairs = [(0, 1), (0, 2), (1, 2)]
    w = [abs(1 / (i + 1) - 1 / (j + 1)) for i, j in pairs]
    terms = [softplus(-(s[i] - s[j] - margin) / t) for i, j in pairs]
    expected = sum(a * b for a, b in zip(w, terms, strict=True)) / sum(w)
    got = distilled_ranknet(torch.tensor(s), temperature=t, margin=margin, weighting="delta")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_pair_weights_are_upper_triangular():
    w = pair_weights(4, "reciprocal_sum")
    assert torch.all(torch.tril(w) == 0)
    assert w[0, 1].item() == pytest.approx(1.5)
    assert pair_weights(3, "uniform").sum().item() == 3


def test_correct_order_costs_less_than_reversed():
    good = distilled_ranknet(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    bad = distilled_ranknet(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    assert good < bad


@pytest.mark.parametrize(
    "scores",
    [
        [[0.5, 0.5, 0.5]],  # all equal
        [[1.0]],  # m = 1: no pair
        [[1e6, -1e6, 0.0]],  # huge gaps, no violated pair
        [[-1e6, 1e6, 0.0]],  # huge gaps, all violated
        [[-300.0, -80.0]],  # sequence log-probs of a random model
    ],
)
def test_finite_with_finite_gradients_in_degenerate_cases(scores):
    s = torch.tensor(scores, requires_grad=True)
    loss = distilled_ranknet(s)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_masked_columns_and_short_lists():
    s = torch.tensor([[1.0, 3.0, 0.0], [2.0, 9.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    loss = distilled_ranknet(s, mask=mask)  # the second list has one real passage: ignored
    assert loss.item() == pytest.approx(distilled_ranknet(torch.tensor([1.0, 3.0, 0.0])).item())
    loss.backward()
    assert torch.all(s.grad[1] == 0)
    # Only padding: still a differentiable zero.
    zero = distilled_ranknet(s, mask=torch.zeros_like(mask))
    zero.backward()
    assert zero.item() == 0.0


def test_module_form_and_bad_temperature():
    s = torch.tensor([0.2, 0.1, 0.4])
    assert DistilledRankNetLoss(0.5, 0.1)(s).item() == pytest.approx(
        distilled_ranknet(s, 0.5, 0.1).item()
    )
    with pytest.raises(ValueError):
        distilled_ranknet(s, temperature=0.0)

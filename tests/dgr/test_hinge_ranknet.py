"""DGR's released hinge RankNet, checked against a transcription of the released code."""

import torch

from components.dgr.hinge_ranknet import released_ranknet


def _released(sorted_scores, rank_margin=300.0, n=100.0, first_row_weight=3.0):
    """liyongqi67/MINDER seal/minder_ltr_listwise_seal.py, `manual_rankNet`, one list set."""
    num_scores = sorted_scores.size(1)
    i_indices, j_indices = torch.meshgrid(torch.arange(num_scores), torch.arange(num_scores),
                                          indexing="ij")
    mask = i_indices < j_indices
    diffs = (sorted_scores[:, j_indices] - sorted_scores[:, i_indices] + rank_margin
             + (j_indices - i_indices - 1) * n)
    diffs = torch.where(diffs < 0, torch.zeros_like(diffs), diffs)
    A, B, C = diffs.size()
    weights = torch.ones((A, B, C))
    for i in range(B):
        weights[:, i, i + 1:] = first_row_weight if i == 0 else 1 / (i + 1)
    weighted_diffs = diffs * weights * mask
    return torch.mean(weighted_diffs[weighted_diffs != 0])


def test_it_equals_the_released_code():
    torch.manual_seed(0)
    for scale, margin, step in ((30.0, 300.0, 100.0), (400.0, 300.0, 100.0), (2.0, 1.0, 0.5)):
        scores = torch.randn(5, 6) * scale
        expected = _released(scores, margin, step)
        got = released_ranknet(scores, margin, step)
        assert torch.allclose(got, expected), (scale, got, expected)


def test_padding_is_left_out_and_a_satisfied_order_costs_nothing():
    scores = torch.tensor([[10.0, 5.0, 0.0, 99.0], [3.0, 2.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    padded = released_ranknet(scores, 2.0, 1.0, mask=mask)
    # Row 0's padding (99, which would beat everything) is out; row 1 alone costs.
    assert torch.allclose(padded, _released(scores[1:], 2.0, 1.0))
    ordered = torch.tensor([1000.0, 500.0, 0.0], requires_grad=True)
    loss = released_ranknet(ordered, 300.0, 100.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(ordered.grad, torch.zeros(3))


def test_its_gradient_moves_the_student_toward_the_teachers_order():
    scores = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)  # the teacher's order reversed
    released_ranknet(scores, 300.0, 100.0).backward()
    assert scores.grad[0, 0] < 0 < scores.grad[0, 2]  # raise the best, lower the worst

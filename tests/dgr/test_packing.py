"""Packed rows give every token the states of its own unpacked row."""

from __future__ import annotations

import pytest
import torch

from components.dgr.packing import Packing, packable, packed_target_logprobs
from components.dgr.scoring import QueryPrompt, common_prefix, make_lm_batch, target_logprobs
from components.dgr.trie import encode_identifier


def test_packing_layout_on_a_hand_example():
    # row 0: a root of 2 tokens, two children of 2 and 1; row 1: one segment of 3.
    packing = Packing.build([2, 2, 1, 3], [None, 0, 0, None], [0, 0, 0, 1])
    assert packing.starts == [0, 2, 4, 0] and packing.width == 5
    assert packing.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    allowed = packing.allowed[:, 0].int().tolist()
    assert allowed[0] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the second child sees the root and itself, not its sibling
    ]
    assert allowed[1] == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],  # padding attends to itself only
        [0, 0, 0, 0, 1],
    ]
    with pytest.raises(ValueError, match="parent"):
        Packing.build([1, 1], [None, 0], [0, 1])


def test_common_prefix_keeps_tokens():
    assert common_prefix([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix([[1, 2], [1, 2]]) == 1  # each keeps its last token
    assert common_prefix([[1, 2], [3, 2]]) == 0


@pytest.mark.parametrize("max_row_tokens", [1024, 40], ids=["one_row", "a_row_each"])
def test_packed_logprobs_and_gradients_equal_the_padded_batch(
    tiny_model, tokenizer, max_row_tokens
):
    assert packable(tiny_model)
    prompts = QueryPrompt(tokenizer).encode(
        ["apple river", "a much longer query about the copper engine", "stone"]
    )
    targets = [encode_identifier(tokenizer, "title", t) for t in ["red fox", "a", "blue sky x"]]
    params = [p for p in tiny_model.parameters() if p.requires_grad]

    full, full_mask = target_logprobs(
        tiny_model, make_lm_batch(prompts, targets, tokenizer.pad_token_id)
    )
    full.sum().backward()
    expected = [p.grad.clone() for p in params]
    tiny_model.zero_grad(set_to_none=True)

    packed, packed_mask = packed_target_logprobs(tiny_model, prompts, targets, max_row_tokens)
    for i, target in enumerate(targets):  # the padded batch aligns right, the packed one left
        assert packed_mask[i].sum() == full_mask[i].sum() == len(target)
        torch.testing.assert_close(
            packed[i][packed_mask[i]], full[i][full_mask[i]], atol=1e-5, rtol=1e-5
        )
    packed.sum().backward()
    for param, grad in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, grad, atol=1e-5, rtol=1e-4)
    tiny_model.zero_grad(set_to_none=True)
